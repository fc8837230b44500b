// proctor::Process: Python's multiprocessing.Process, with proctord underneath.
//
//   void piao(std::string name) { ... }
//   PROCTOR_FUNCTION(piao);
//
//   int main(int argc, char** argv) {
//     proctor::MaybeRunChild(argc, argv);  // proctor's `if __name__ == '__main__':`
//     proctor::Process p({.target = piao, .args = {"A"}});
//     if (absl::Status s = p.start(); !s.ok()) ...
//     if (absl::Status s = p.join(); !s.ok()) ...
//     std::optional<int> code = p.exitcode();
//   }
//
// Targets. A target is one of:
//   - an executable and its arguments, as with the CLI (a bare name is looked up on proctord's
//     PATH; kwargs reach it as --key=value after args, keys sorted);
//   - a function of this program registered with PROCTOR_FUNCTION. It runs in a fresh process
//     of this same executable (the `spawn` start method): the child is /proc/self/exe started
//     with "--proctor-run=<name> --proctor-nargs=<N>", the N args, then the kwargs, and
//     MaybeRunChild() at the top of main() finds the function and calls it. Parameters are
//     either one `const proctor::Args&` (all args and kwargs as strings) or typed: std::string,
//     integers, floating point and bool, parsed from the strings;
//   - a subclass overriding run() registered with PROCTOR_PROCESS_CLASS: the child rebuilds
//     it from its constructor arguments (derive from ProcessClass<ConstructorArgs...>) and
//     calls run().
// In the child, a function's int return value is the exit code (void: 0); run() gives 0, and
// std::exit(n) gives n, as sys.exit does. An exception escaping the target is written to
// stderr and gives exit code 1, as in Python (the library itself throws nothing).
// The child's stdout is line-buffered, so its lines reach the parent while it runs.
//
// Errors are absl::Status, never exceptions. Python's AssertionError/ValueError for misuse
// ("cannot start a process twice", "can only join a started process", "process has already
// started", "process object is closed", closing a running process) are FAILED_PRECONDITION
// with Python's message: they are about the object's state, not its arguments, and the caller
// recovers by changing the state (join first, make a new object). Errors from proctord come
// back unchanged (e.g. FAILED_PRECONDITION "daemonic processes are not allowed to have
// children", NOT_FOUND for a missing executable, RESOURCE_EXHAUSTED for a spawn limit).
//
// Connection. Processes are started through a proctor::Client made on first use from
// $PROCTOR_ADDRESS and the key found as the CLI finds it (client/credentials.h), or through
// the one given to UseDaemon(). With an admin key the program opens one Session and starts
// every process in it, so its daemonic children are ended by proctord when the program dies
// by any cause; inside a worker (its own key, $PROCTOR_AUTHKEY + $PROCTOR_ID) no session is
// used: the worker is the parent of what it starts. Connections live as long as the program.
//
// Output. While a child runs, the library copies its stdout and stderr, line by line, to this
// program's stdout and stderr (two threads per child, Client::Logs with follow); proctord
// keeps its own copy as for any worker. join() returns only after all of it has been written
// and flushed.
//
// Exit. At normal exit (return from main, std::exit) the library terminates the daemonic
// children this program started and still runs, then joins all of them, as multiprocessing's
// exit handler does; the program's output is then complete. A Process object going out of
// scope neither stops nor forgets its process.
//
// Environment. A child inherits this program's environment, as a forked or spawned child
// does, with `env` layered on top, except every PROCTOR_* variable of this program:
// PROCTOR_ID, PROCTOR_AUTHKEY, PROCTOR_PROCESS_AUTHKEY and PROCTOR_ADDRESS are set by proctord
// for the worker itself (its own id, its own credential, its authkey attribute, the address
// workers call back on), and PROCTOR_AUTHKEY_FILE and PROCTOR_TLS_* are this program's
// connection settings (the admin key above all), which a worker must not reach. The library
// adds its own: PROCTOR_PROCESS_IDENTITY (the child's place in the names below) and
// PROCTOR_PARENT_ID, _PID, _NAME and _STAMP (what parent_process() reports in the child). Its
// working directory is `cwd` resolved against this program's, by default this program's.
//
// Names, as multiprocessing gives them: each program numbers the processes it makes, from 1,
// at construction; the n-th is "Process-n" in a main program and "Process-3:1:n" inside the
// worker named Process-3:1 by its parent's library (a subclass is named after its class,
// "Piao-n"); a name given in ProcessOptions::name or set_name() wins. Inside a worker that was
// not started by this library (by the CLI, say), names are left to proctord, which numbers
// them the same way at start().
//
// Where proctor differs from multiprocessing on purpose:
//   - terminate() and kill() reach the process and everything below it (its children through
//     proctord, whatever it forked, even what escaped with setsid), so nothing is left behind
//     as an orphan; Reach::kGroup gives multiprocessing's reach back (only the process's own
//     process group: its children through proctord live on);
//   - authkeys are per tree: a top-level process gets 32 fresh random bytes of its own
//     instead of the main program's key, and its descendants inherit that one;
//   - the credential a worker calls proctord with is its own and never its parent's: a worker
//     reaches its own subtree, and may read its ancestors' records but not change them (see
//     parent_process()).
//
// Thread-safety: one Process object is used by one thread at a time; different objects may
// be used from different threads. current_process() and the registry are thread-safe.
#ifndef PROCTOR_CLIENT_PROCESS_H_
#define PROCTOR_CLIENT_PROCESS_H_

#include <sys/types.h>

#include <charconv>
#include <concepts>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace proctor {

class Process;

// One argument as it travels: text, made from a string, a char or a number (numbers are
// written in their shortest exact form, bools as "true"/"false").
class Arg {
 public:
  Arg(const char* text) : text_(text) {}  // NOLINT: implicit on purpose, as in .args = {"A"}
  Arg(std::string text) : text_(std::move(text)) {}  // NOLINT
  template <typename T>
    requires std::integral<T>
  Arg(T value) {  // NOLINT
    if constexpr (std::is_same_v<T, bool>) {
      text_ = value ? "true" : "false";
    } else if constexpr (std::is_same_v<T, char>) {
      text_ = std::string(1, value);
    } else {
      text_ = absl::StrCat(value);
    }
  }
  template <typename T>
    requires std::floating_point<T>
  Arg(T value) {  // NOLINT
    char buffer[64];
    auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
    text_.assign(buffer, ec == std::errc() ? end : buffer);
  }

  // An object that travels as text of its own, such as a sync object (client/sync.h): the
  // child rebuilds it with T::FromArg.
  template <typename T>
    requires requires(const T& t) {
      { t.ToArg() } -> std::convertible_to<std::string>;
    }
  Arg(const T& object) : text_(object.ToArg()) {}  // NOLINT

  const std::string& str() const { return text_; }

 private:
  std::string text_;
};

// The arguments a function target (or a rebuilt class) receives in the child.
class Args {
 public:
  Args() = default;
  Args(std::vector<std::string> positional, std::map<std::string, std::string> kwargs)
      : positional_(std::move(positional)), kwargs_(std::move(kwargs)) {}

  size_t size() const { return positional_.size(); }
  // Requires i < size().
  const std::string& operator[](size_t i) const { return positional_[i]; }
  const std::vector<std::string>& positional() const { return positional_; }
  const std::map<std::string, std::string>& kwargs() const { return kwargs_; }
  std::optional<std::string> kwarg(absl::string_view key) const {
    auto it = kwargs_.find(std::string(key));
    if (it == kwargs_.end()) return std::nullopt;
    return it->second;
  }

  // Typed access: std::string, integers, floating point, bool. INVALID_ARGUMENT naming the
  // argument when it is missing or does not parse.
  template <typename T>
  absl::StatusOr<T> Get(size_t i) const;
  template <typename T>
  absl::StatusOr<T> Get(absl::string_view key) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> kwargs_;
};

namespace internal {

using FunctionKey = void (*)();
// Calls a registered function; an error means its arguments did not fit its parameters.
using Invoker = absl::StatusOr<int> (*)(FunctionKey function, const Args& args,
                                        absl::string_view callee);
// Rebuilds a registered class from its constructor arguments.
using Maker = absl::StatusOr<std::unique_ptr<Process>> (*)(const Args& args);

// Both return true (for a static initialiser); registering a name twice makes the name
// unusable, and starting it then fails naming the clash.
bool RegisterFunction(const char* name, FunctionKey function, Invoker invoke);
bool RegisterClass(const char* name, std::type_index type, Maker make);

// Types rebuilt from their argument text by a static FromArg (sync objects).
template <typename T>
concept FromArgParsable = requires(const std::string& text) {
  { T::FromArg(text) } -> std::same_as<absl::StatusOr<T>>;
};

template <typename T>
inline constexpr bool kParsable =
    std::is_same_v<T, std::string> || std::is_same_v<T, bool> || std::is_integral_v<T> ||
    std::is_floating_point_v<T> || FromArgParsable<T>;

template <typename T>
absl::StatusOr<T> Parse(const std::string& text, absl::string_view what) {
  static_assert(kParsable<T>,
                "proctor arguments are std::string, integers, floating point, bool or sync "
                "objects");
  if constexpr (FromArgParsable<T>) {
    absl::StatusOr<T> object = T::FromArg(text);
    if (!object.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", object.status().message()));
    }
    return object;
  } else {
    T value{};
    bool ok = true;
    if constexpr (std::is_same_v<T, std::string>) {
      value = text;
    } else if constexpr (std::is_same_v<T, bool>) {
      ok = absl::SimpleAtob(text, &value);
    } else if constexpr (std::is_floating_point_v<T>) {
      double d = 0;
      ok = absl::SimpleAtod(text, &d);
      value = static_cast<T>(d);
    } else if constexpr (sizeof(T) < sizeof(int)) {
      int wide = 0;
      ok = absl::SimpleAtoi(text, &wide) && wide >= std::numeric_limits<T>::min() &&
           wide <= std::numeric_limits<T>::max();
      value = static_cast<T>(wide);
    } else {
      ok = absl::SimpleAtoi(text, &value);
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " is \"", text, "\", which is not a valid ",
                       std::is_same_v<T, bool> ? "bool"
                       : std::is_floating_point_v<T> ? "number"
                                                     : "integer"));
    }
    return value;
  }
}

// Python's TypeError for a call that does not fit: count, then keywords, then each value.
template <typename... P>
absl::StatusOr<std::tuple<P...>> ParseAll(const Args& args, absl::string_view callee) {
  if (!args.kwargs().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(callee, "() got an unexpected keyword argument '",
                     args.kwargs().begin()->first, "' (take const proctor::Args& for kwargs)"));
  }
  if (args.size() != sizeof...(P)) {
    return absl::InvalidArgumentError(absl::StrCat(callee, "() takes ", sizeof...(P),
                                                   " positional arguments but ", args.size(),
                                                   " were given"));
  }
  std::tuple<absl::StatusOr<P>...> parsed = [&]<size_t... I>(std::index_sequence<I...>) {
    return std::tuple<absl::StatusOr<P>...>(
        Parse<P>(args[I], absl::StrCat("argument ", I + 1, " of ", callee, "()"))...);
  }(std::index_sequence_for<P...>{});
  absl::Status first_error;
  std::apply([&](const auto&... each) { (first_error.Update(each.status()), ...); }, parsed);
  if (!first_error.ok()) return first_error;
  return std::apply([](auto&... each) { return std::tuple<P...>(*std::move(each)...); },
                    parsed);
}

template <typename R, typename... P>
absl::StatusOr<int> Invoke(FunctionKey key, const Args& args, absl::string_view callee) {
  auto function = reinterpret_cast<R (*)(P...)>(key);
  if constexpr (sizeof...(P) == 1 &&
                (std::is_same_v<std::remove_cvref_t<P>, Args> && ...)) {
    if constexpr (std::is_void_v<R>) {
      function(args);
      return 0;
    } else {
      return static_cast<int>(function(args));
    }
  } else {
    absl::StatusOr<std::tuple<std::remove_cvref_t<P>...>> parsed =
        ParseAll<std::remove_cvref_t<P>...>(args, callee);
    if (!parsed.ok()) return parsed.status();
    if constexpr (std::is_void_v<R>) {
      std::apply(function, *std::move(parsed));
      return 0;
    } else {
      return static_cast<int>(std::apply(function, *std::move(parsed)));
    }
  }
}

template <typename R, typename... P>
constexpr Invoker InvokerFor(R (*)(P...)) {
  return &Invoke<R, P...>;
}

template <typename T, typename... P>
absl::StatusOr<std::unique_ptr<Process>> Make(const Args& args, absl::string_view callee,
                                              std::tuple<P...>*) {
  absl::StatusOr<std::tuple<P...>> parsed = ParseAll<P...>(args, callee);
  if (!parsed.ok()) return parsed.status();
  return std::apply(
      [](P&... each) -> std::unique_ptr<Process> {
        return std::make_unique<T>(std::move(each)...);
      },
      *parsed);
}

}  // namespace internal

template <typename T>
absl::StatusOr<T> Args::Get(size_t i) const {
  if (i >= positional_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("argument ", i + 1, " is missing (", positional_.size(), " given)"));
  }
  return internal::Parse<T>(positional_[i], absl::StrCat("argument ", i + 1));
}

template <typename T>
absl::StatusOr<T> Args::Get(absl::string_view key) const {
  std::optional<std::string> value = kwarg(key);
  if (!value.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("keyword argument '", key, "' is missing"));
  }
  return internal::Parse<T>(*value, absl::StrCat("keyword argument '", key, "'"));
}

// What a Process runs: nothing, an executable, or a registered function.
class Target {
 public:
  Target() = default;
  Target(const char* executable) : executable_(executable) {}  // NOLINT
  Target(std::string executable) : executable_(std::move(executable)) {}  // NOLINT
  // A function registered with PROCTOR_FUNCTION (start() fails naming it when it is not).
  template <typename R, typename... P>
  Target(R (*function)(P...))  // NOLINT
      : function_(reinterpret_cast<internal::FunctionKey>(function)) {}
  // The function registered under `name` (PROCTOR_FUNCTION's argument, spelt the same).
  static Target Function(std::string name) {
    Target target;
    target.function_name_ = std::move(name);
    return target;
  }

  bool empty() const {
    return executable_.empty() && function_ == nullptr && function_name_.empty();
  }
  bool is_function() const { return function_ != nullptr || !function_name_.empty(); }
  const std::string& executable() const { return executable_; }
  internal::FunctionKey function() const { return function_; }
  const std::string& function_name() const { return function_name_; }

 private:
  std::string executable_;
  internal::FunctionKey function_ = nullptr;
  std::string function_name_;
};

// Process's keyword arguments; use designated initialisers.
struct ProcessOptions {
  Target target;
  std::vector<Arg> args;
  std::map<std::string, Arg> kwargs;
  // Empty: the name given at construction (see "Names" above).
  std::string name;
  bool daemon = false;
  // KEY=VALUE entries over the environment the child inherits (see "Environment" above).
  std::vector<std::string> env;
  // Relative to this program's working directory; empty: this program's working directory.
  std::string cwd;
  // multiprocessing's authkey, for the program's own use. Empty: inside a worker, the
  // worker's own (children inherit it, as in Python); elsewhere 32 fresh random bytes for
  // each process, as proctord gives top-level processes. It is not the credential proctord
  // checks: each worker has one of its own, which a child never shares.
  std::string authkey;
};

// Whom a signal from terminate(), kill() or interrupt() reaches.
enum class Reach {
  // The process and everything below it (see "Where proctor differs" above).
  kTree,
  // Only the process's own process group, as multiprocessing reaches only the process: its
  // children started through proctord, and what left its group, live on.
  kGroup,
};

namespace internal {
struct ChildState;
struct ParentLink;
class Runtime;
int RunChild(int argc, char** argv);
}  // namespace internal

class Process {
 public:
  // Set by ProcessClass; a class derived straight from Process is rebuilt default-constructed.
  using ConstructorArgs = std::tuple<>;

  explicit Process(ProcessOptions options = {});
  virtual ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  Process(Process&&) = default;
  Process& operator=(Process&&) = default;

  // Starts the process and returns once proctord has exec'd it. A registered subclass (see
  // PROCTOR_PROCESS_CLASS) is rebuilt in the child and its run() called; otherwise the target
  // runs. FAILED_PRECONDITION: "cannot start a process twice", "process object is closed",
  // an unregistered function or subclass, or nothing to run; else proctord's error.
  absl::Status start();

  // start() and join() in one call to proctord (its Run): the process's output is written
  // to this program's stdout and stderr as it comes, whole lines at a time, and its exit
  // record comes at the end of the same stream. One round trip where start() and join()
  // make two, and no follower of the capture files in proctord. Returns once the process
  // has ended, its output written and flushed; exitcode() is then set. The errors of
  // start(); once the process has started, an error (proctord stopped answering) leaves it
  // running, as a failed join() does, and join() may be called to wait again.
  absl::Status start_and_join();

  // What runs in the child. The default calls the function target with args and kwargs in
  // this process (Python's p.run(); exceptions from the target propagate); for an executable
  // target it writes an error to stderr and does nothing, since running it here would
  // replace this program. Subclasses override it.
  virtual void run();

  // Waits for the process to end, at most `timeout` when given (not ending in time is not an
  // error: exitcode() is then still empty); a timeout of zero or less only looks, as Python's
  // join(-1) does. When it has ended, its forwarded output has all been written and flushed.
  // FAILED_PRECONDITION "can only join a started process". On parent_process(), see there.
  absl::Status join(std::optional<absl::Duration> timeout = std::nullopt);

  // False before start() and once ended. On parent_process(), see there.
  absl::StatusOr<bool> is_alive();

  // SIGTERM, SIGKILL and SIGINT, as multiprocessing's terminate(), kill() and interrupt():
  // the signal and nothing more (a process that ignores SIGTERM keeps running), to the
  // process and, by default, everything below it (Reach). They return without waiting
  // (join() to wait). No-op once ended. FAILED_PRECONDITION before start().
  // They send Terminate with escalate=false: proctord sends the signal and arms no SIGKILL.
  absl::Status terminate(Reach reach = Reach::kTree);
  absl::Status kill(Reach reach = Reach::kTree);
  absl::Status interrupt(Reach reach = Reach::kTree);
  // proctord's own terminate: SIGTERM, SIGKILL to whatever is left of it after `grace`, and
  // returns once it has ended (its output forwarded, as join()).
  absl::Status terminate_and_wait(absl::Duration grace = absl::Seconds(10),
                                  Reach reach = Reach::kTree);

  // multiprocessing's sentinel: a descriptor that becomes readable when the process ends and
  // stays so, for poll/epoll/select. For a child, an eventfd the library writes once it knows
  // the process has ended (its output streams or a Join said so); for parent_process(), a
  // pidfd of the parent where it runs on this host. Owned by the library: do not read or
  // close it; it stays valid until close() or the object is destroyed. FAILED_PRECONDITION
  // "process not started" before start(), "process object is closed" after close().
  absl::StatusOr<int> sentinel() const;

  // Releases proctord's record and captured output. OK before start() and when already
  // closed. FAILED_PRECONDITION while running: "Cannot close a process while it is still
  // running. You should first call join() or terminate()." Afterwards, every call but the
  // accessors is FAILED_PRECONDITION "process object is closed".
  absl::Status close();

  // The name given, else the one made at construction (see "Names" above); empty only inside
  // a worker the library did not start, until start() brings proctord's.
  const std::string& name() const;
  // Changes the local name; it reaches proctord only with start().
  void set_name(std::string name) { options_.name = std::move(name); }
  bool daemon() const { return options_.daemon; }
  // FAILED_PRECONDITION "process has already started" after start().
  absl::Status set_daemon(bool daemon);
  // The key the process holds (see ProcessOptions::authkey); meaningful from construction.
  const std::string& authkey() const { return authkey_; }
  void set_authkey(std::string key) { authkey_ = std::move(key); }

  // Empty before start().
  std::optional<pid_t> pid() const { return pid_; }
  // Empty before start() and while running; N for exit(N), -N for signal N. Asks proctord
  // when not known yet.
  std::optional<int> exitcode();
  // proctord's id (never reused); 0 before start(). For current_process() in the main
  // program, 0.
  uint64_t id() const { return id_; }
  // The worker that started it (0: none, e.g. a session or an admin client started it).
  uint64_t parent_id() const {
    return record_.has_parent_id() ? record_.parent_id() : 0;
  }
  // proctord's record as last seen (by start, join, is_alive, exitcode, Refresh).
  const v1::Process& record() const { return record_; }
  // Fetches the record again.
  absl::Status Refresh();

 protected:
  // For subclasses' constructors: the options before start().
  ProcessOptions& options() { return options_; }
  void set_constructor_args(std::vector<Arg> args) { constructor_args_ = std::move(args); }

 private:
  friend Process& current_process();
  friend Process* parent_process();
  friend int internal::RunChild(int argc, char** argv);

  struct Self {};  // makes the object for the running process itself
  Process(Self, uint64_t id);
  struct Parent {};  // makes the object for the process that started this one
  Process(Parent, uint64_t id, std::optional<pid_t> pid, std::string name,
          std::shared_ptr<internal::ParentLink> link);
  absl::Status CheckUsable() const;
  // The request's target and arguments, for whichever kind of target this is.
  absl::Status FillTarget(v1::StartRequest& request) const;
  // The environment the child starts with (see "Environment" above).
  void FillEnvironment(v1::StartRequest& request);
  // What start() and start_and_join() ask proctord for, checked as start() documents, with
  // the connection and the sentinel's eventfd (made before: once the process runs, there
  // must be a sentinel to give).
  struct PreparedStart {
    std::shared_ptr<internal::Runtime> runtime;
    v1::StartRequest request;
    int ended_fd = -1;
  };
  absl::StatusOr<PreparedStart> PrepareStart();
  // Takes the record proctord answered a Start (or a Run) with, and the sentinel.
  void Started(PreparedStart& prepared, const v1::Process& started);
  // `grace` unset: the signal alone, never followed by SIGKILL.
  absl::Status Signal(int sig, const char* verb, Reach reach, std::optional<absl::Duration> grace);
  absl::Status JoinParent(std::optional<absl::Duration> timeout);
  absl::StatusOr<bool> ParentAlive();
  void Update(const v1::Process& record);

  ProcessOptions options_;
  std::vector<Arg> constructor_args_;
  std::string authkey_;
  // Where the default name comes from: "3:1" for Process-3:1; empty when proctord names it.
  std::string identity_;
  mutable std::string default_name_;  // made from identity_ and the class on first use
  bool started_ = false;
  bool closed_ = false;
  bool current_ = false;  // the running process itself: nothing to start, join or signal
  bool parent_ = false;   // parent_process(): only looked at
  uint64_t id_ = 0;
  std::optional<pid_t> pid_;
  v1::Process record_;
  std::shared_ptr<internal::ChildState> child_;
  std::shared_ptr<internal::ParentLink> parent_link_;
};

// A Process subclass rebuilt in the child from its constructor arguments: derive
// `class Piao : public proctor::ProcessClass<std::string>`, construct the base with the
// constructor's arguments (`Piao(std::string name) : ProcessClass(name) {...}`), override
// run(), and register it with PROCTOR_PROCESS_CLASS(Piao). The types are those Args::Get
// parses; Derived must have a constructor taking them in that order.
template <typename... CtorArgs>
class ProcessClass : public Process {
 public:
  using ConstructorArgs = std::tuple<std::remove_cvref_t<CtorArgs>...>;

 protected:
  explicit ProcessClass(const std::remove_cvref_t<CtorArgs>&... args) {
    set_constructor_args({Arg(args)...});
  }
};

// The process this code runs in. In the main program: name "MainProcess", id 0. In a worker:
// its id ($PROCTOR_ID), key ($PROCTOR_AUTHKEY), and name and parent from its record (fetched
// on first use; record() is empty if that failed, and Refresh() says why); in a rebuilt
// subclass's child, that object itself.
Process& current_process();

// The process that started this one, as multiprocessing's parent_process(): null in a main
// program (and in a worker with no parent process, e.g. one the CLI started). Its pid() and
// name() are those the parent's library passed at start() (for a parent that is a worker not
// started by the library, fetched from proctord, and empty if that is refused); id() is 0 when
// the parent is a client program rather than a worker. is_alive(), join() and sentinel() watch
// a pidfd of the parent where it runs on this host (same boot, same pid namespace, and its
// start time checked, so a reused pid is never taken for it). Elsewhere they ask proctord
// about a parent worker (a worker's key may read its ancestors' records); an error comes
// back as "cannot ask proctord about parent process N: ...". For a client program on another
// host they are UNIMPLEMENTED. start(), terminate() and kill() are
// FAILED_PRECONDITION. The object lives as long as the program.
Process* parent_process();

// The ids of the children this program started (through this library, from any thread) that
// are still running, as multiprocessing's active_children(); one call to proctord per
// connection that has started children not known to have ended.
absl::StatusOr<std::vector<uint64_t>> active_children();

// Call first thing in main(). In a child started for a function or subclass target (argv[1]
// is --proctor-run=...), runs it and exits with its exit code, never returning; an unknown
// name or arguments that do not fit give exit code 1 with the reason on stderr. Otherwise
// returns at once.
void MaybeRunChild(int argc, char** argv);

// Processes started from now on use a proctord reached with `options` (the default is
// ClientOptions{}: $PROCTOR_ADDRESS and the CLI's key search). Processes already started
// keep the connection they were started with.
absl::Status UseDaemon(const ClientOptions& options);

// The client Processes use now (made on first use); for calls of your own.
absl::StatusOr<Client*> DefaultClient();
// The session this program acts in with an admin key (opened on first use), or 0 inside a
// worker, which acts as itself. Sync objects (client/sync.h) are held in it.
absl::StatusOr<uint64_t> DefaultSession();

}  // namespace proctor

// Registers a function of this program as a target, under its name as written.
// At namespace scope: PROCTOR_FUNCTION(piao); or PROCTOR_FUNCTION(tools::piao);
#define PROCTOR_FUNCTION(function)                                                         \
  [[maybe_unused]] static const bool PROCTOR_INTERNAL_CONCAT(proctor_function_, __LINE__) = \
      ::proctor::internal::RegisterFunction(                                               \
          #function, reinterpret_cast<::proctor::internal::FunctionKey>(&function),        \
          ::proctor::internal::InvokerFor(&function))

// Registers a Process subclass, under its name as written. At namespace scope.
#define PROCTOR_PROCESS_CLASS(type)                                                          \
  [[maybe_unused]] static const bool PROCTOR_INTERNAL_CONCAT(proctor_class_, __LINE__) =     \
      ::proctor::internal::RegisterClass(#type, std::type_index(typeid(type)),               \
                                         [](const ::proctor::Args& args) {                   \
                                           return ::proctor::internal::Make<type>(           \
                                               args, #type,                                  \
                                               static_cast<type::ConstructorArgs*>(nullptr)); \
                                         })

#define PROCTOR_INTERNAL_CONCAT(a, b) PROCTOR_INTERNAL_CONCAT2(a, b)
#define PROCTOR_INTERNAL_CONCAT2(a, b) a##b

#endif  // PROCTOR_CLIENT_PROCESS_H_
