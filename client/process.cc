#include "client/process.h"

#include <cxxabi.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <stop_token>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "client/credentials.h"
#include "common/authkey.h"
#include "common/environment_names.h"

namespace proctor {
namespace {

constexpr char kRunFlag[] = "--proctor-run=";
constexpr char kNargsFlag[] = "--proctor-nargs=";

absl::Status Misuse(absl::string_view message) { return absl::FailedPreconditionError(message); }

std::string Demangle(const char* mangled) {
  int status = 0;
  char* readable = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string out = status == 0 && readable != nullptr ? readable : mangled;
  std::free(readable);
  return out;
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? "" : value;
}

// What proctord put in a worker's environment; 0 id and an empty authkey outside workers.
// (The worker's credential, PROCTOR_AUTHKEY, is found by FindCredentials for the calls.)
struct WorkerIdentity {
  uint64_t id = 0;
  std::string authkey;  // multiprocessing's attribute, inherited from the parent
};

const WorkerIdentity& Worker() {
  static const WorkerIdentity* identity = [] {
    auto* found = new WorkerIdentity;
    uint64_t id = 0;
    absl::StatusOr<std::string> authkey = HexDecode(Env(kProcessAuthkeyEnv));
    if (absl::SimpleAtoi(Env(kIdEnv), &id) && id != 0 && authkey.ok() && !authkey->empty()) {
      found->id = id;
      found->authkey = *std::move(authkey);
    }
    return found;
  }();
  return *identity;
}

// ---------------------------------------------------------------------------------------------
// The registry of function and class targets. Filled by static initialisers, so it is made on
// first use (no initialisation-order dependence) and never destroyed.

struct Entry {
  std::string name;
  internal::FunctionKey function = nullptr;
  internal::Invoker invoke = nullptr;
  std::optional<std::type_index> type;
  internal::Maker make = nullptr;
  int registrations = 0;
};

class Registry {
 public:
  static Registry& Get() {
    static Registry* registry = new Registry;
    return *registry;
  }

  void Add(Entry entry) {
    absl::MutexLock lock(&mu_);
    Entry& slot = entries_[entry.name];
    int registrations = slot.registrations + 1;
    slot = std::move(entry);
    slot.registrations = registrations;
  }

  // The entry named `name`; FAILED_PRECONDITION when there is none or it is ambiguous.
  absl::StatusOr<Entry> ByName(const std::string& name) {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      return Misuse(absl::StrCat("no function or class named \"", name,
                                 "\" is registered in this program (PROCTOR_FUNCTION, "
                                 "PROCTOR_PROCESS_CLASS)"));
    }
    if (it->second.registrations > 1) {
      return Misuse(absl::StrCat("\"", name, "\" is registered ", it->second.registrations,
                                 " times; give each target its own name"));
    }
    return it->second;
  }

  std::optional<std::string> NameOfFunction(internal::FunctionKey function) {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, entry] : entries_) {
      if (entry.function == function) return name;
    }
    return std::nullopt;
  }

  std::optional<std::string> NameOfClass(std::type_index type) {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, entry] : entries_) {
      if (entry.type == type) return name;
    }
    return std::nullopt;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

Args ToArgs(const std::vector<Arg>& args, const std::map<std::string, Arg>& kwargs) {
  std::vector<std::string> positional;
  for (const Arg& arg : args) positional.push_back(arg.str());
  std::map<std::string, std::string> keywords;
  for (const auto& [key, value] : kwargs) keywords.emplace(key, value.str());
  return Args(std::move(positional), std::move(keywords));
}

}  // namespace

namespace internal {

bool RegisterFunction(const char* name, FunctionKey function, Invoker invoke) {
  Registry::Get().Add(Entry{.name = name, .function = function, .invoke = invoke});
  return true;
}

bool RegisterClass(const char* name, std::type_index type, Maker make) {
  Registry::Get().Add(Entry{.name = name, .type = type, .make = make});
  return true;
}

// ---------------------------------------------------------------------------------------------
// Connections and the children started through them.

class Runtime;

// What outlives a Process object: the child's forwarders, and whether it has ended, for
// join() and for the exit handler.
struct ChildState {
  ChildState(Runtime& runtime, uint64_t id, bool daemon)
      : runtime(runtime), id(id), daemon(daemon) {}
  // A child dropped unjoined (it ended and its Process is gone) may still have forwarder
  // threads that have written everything but were never joined.
  ~ChildState() {
    for (std::thread& t : forwarders) {
      if (!t.joinable()) continue;
      if (t.get_id() == std::this_thread::get_id()) {
        t.detach();  // the last reference went with the forwarder's own end
      } else {
        t.join();
      }
    }
  }

  // Returns once both forwarders have written all they will write.
  void WaitForwarders() {
    // Held across the joins so that a second caller also waits until the output is out.
    absl::MutexLock lock(&join_mu);
    for (std::thread& t : forwarders) {
      if (t.joinable()) t.join();
    }
  }

  Runtime& runtime;
  const uint64_t id;
  const bool daemon;
  std::atomic<bool> ended = false;
  std::atomic<int> forwarding = 0;
  absl::Mutex join_mu;
  std::vector<std::thread> forwarders;  // set once, before anyone joins
  // Stops the forwarders' streams early, when the daemon is not answering.
  std::stop_source stop_forwarding;
};

class Runtime {
 public:
  static absl::StatusOr<std::shared_ptr<Runtime>> Make(ClientOptions options) {
    // Found here rather than inside Connect so that we know whose key it is.
    if (!options.credentials.has_value()) {
      absl::StatusOr<Credentials> found = FindCredentials(options.authkey_file);
      if (!found.ok()) return found.status();
      options.credentials = *std::move(found);
    }
    bool worker = options.credentials->key_id != kAdminKeyId;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (!client.ok()) return client.status();
    return std::shared_ptr<Runtime>(new Runtime(*std::move(client), worker));
  }

  Client& client() { return *client_; }
  bool worker() const { return worker_; }

  // The session this program's processes are started in, opened on first use.
  absl::StatusOr<uint64_t> SessionId() {
    absl::MutexLock lock(&mu_);
    if (session_ == nullptr) {
      absl::StatusOr<std::unique_ptr<Session>> opened = client_->OpenSession();
      if (!opened.ok()) return opened.status();
      session_ = *std::move(opened);
    }
    return session_->id();
  }

  // Ends the session: proctord terminates whatever daemonic process is left in it.
  void EndSession() {
    std::unique_ptr<Session> session;
    {
      absl::MutexLock lock(&mu_);
      session = std::move(session_);
    }
  }

  void Adopt(std::shared_ptr<ChildState> child) {
    absl::MutexLock lock(&mu_);
    // Children that ended unjoined (their Process gone, say) are dropped here, so a program
    // that starts many processes does not keep them all.
    std::erase_if(children_, [](const std::shared_ptr<ChildState>& c) {
      return c->ended && c->forwarding == 0;
    });
    children_.push_back(std::move(child));
  }

  void Forget(const ChildState* child) {
    absl::MutexLock lock(&mu_);
    std::erase_if(children_,
                  [child](const std::shared_ptr<ChildState>& c) { return c.get() == child; });
  }

  std::vector<std::shared_ptr<ChildState>> Children() {
    absl::MutexLock lock(&mu_);
    return children_;
  }

 private:
  Runtime(std::unique_ptr<Client> client, bool worker)
      : client_(std::move(client)), worker_(worker) {}

  std::unique_ptr<Client> client_;
  const bool worker_;
  absl::Mutex mu_;
  std::unique_ptr<Session> session_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<ChildState>> children_ ABSL_GUARDED_BY(mu_);
};

}  // namespace internal

namespace {

using internal::ChildState;
using internal::Runtime;

// Runtimes are never destroyed: children started through them may outlive any Process
// object, and the exit handler needs them all.
struct Globals {
  absl::Mutex mu;
  std::shared_ptr<Runtime> current ABSL_GUARDED_BY(mu);
  std::vector<std::shared_ptr<Runtime>> all ABSL_GUARDED_BY(mu);
  bool exit_handler_installed ABSL_GUARDED_BY(mu) = false;
  Process* current_process ABSL_GUARDED_BY(mu) = nullptr;
};

Globals& G() {
  static Globals* globals = new Globals;
  return *globals;
}

absl::StatusOr<std::shared_ptr<Runtime>> CurrentRuntime() {
  Globals& g = G();
  absl::MutexLock lock(&g.mu);
  if (g.current == nullptr) {
    absl::StatusOr<std::shared_ptr<Runtime>> made = Runtime::Make(ClientOptions{});
    if (!made.ok()) return made.status();
    g.current = *made;
    g.all.push_back(*made);
  }
  return g.current;
}

// Copies one stream of a child to ours, whole lines at a time so that lines of different
// children are not cut into each other.
void Forward(ChildState& child, v1::Stream stream, FILE* out) {
  v1::LogsRequest request;
  request.set_id(child.id);
  request.set_stream(stream);
  request.set_follow(true);
  std::string pending;
  auto emit = [out](absl::string_view text) {
    // One fwrite is one locked stdio operation: whole against the program's own output.
    std::fwrite(text.data(), 1, text.size(), out);
    std::fflush(out);
  };
  absl::Status status = child.runtime.client().Logs(
      request,
      [&](std::string_view chunk) {
        pending.append(chunk);
        size_t end = pending.rfind('\n');
        if (end == std::string::npos) return;
        emit(absl::string_view(pending).substr(0, end + 1));
        pending.erase(0, end + 1);
      },
      child.stop_forwarding.get_token());
  if (!pending.empty()) emit(pending);
  // A followed stream ends without error only once the process has ended.
  if (status.ok()) child.ended = true;
  --child.forwarding;
}

void StartForwarding(ChildState& child) {
  child.forwarding = 2;
  child.forwarders.emplace_back([&child] { Forward(child, v1::STREAM_STDOUT, stdout); });
  child.forwarders.emplace_back([&child] { Forward(child, v1::STREAM_STDERR, stderr); });
}

// multiprocessing's _exit_function: terminate the daemonic children, then join them all.
void ExitHandler() {
  std::vector<std::shared_ptr<Runtime>> runtimes;
  {
    Globals& g = G();
    absl::MutexLock lock(&g.mu);
    runtimes = g.all;
  }
  for (const std::shared_ptr<Runtime>& runtime : runtimes) {
    for (const std::shared_ptr<ChildState>& child : runtime->Children()) {
      if (!child->daemon || child->ended) continue;
      v1::TerminateRequest request;
      request.set_id(child->id);
      request.set_wait(false);
      runtime->client().Terminate(request).IgnoreError();
    }
  }
  for (const std::shared_ptr<Runtime>& runtime : runtimes) {
    for (const std::shared_ptr<ChildState>& child : runtime->Children()) {
      if (!child->ended) {
        absl::StatusOr<v1::Process> joined = runtime->client().Join(child->id);
        if (joined.ok() && joined->state() == v1::STATE_EXITED) child->ended = true;
        // The daemon gone or not answering: its streams would not end either.
        if (!joined.ok()) child->stop_forwarding.request_stop();
      }
      child->WaitForwarders();
    }
    runtime->EndSession();
  }
  std::fflush(stdout);
  std::fflush(stderr);
}

void InstallExitHandler() {
  Globals& g = G();
  absl::MutexLock lock(&g.mu);
  if (g.exit_handler_installed) return;
  g.exit_handler_installed = true;
  // Installed after the first start(), hence after gRPC's own statics exist: handlers run in
  // reverse order of registration, so ours runs while the client still works.
  std::atexit(ExitHandler);
}

absl::StatusOr<std::string> SelfExecutable() {
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot find this program's executable: readlink /proc/self/exe: ", std::strerror(errno)));
  }
  std::string exe(path, n);
  // The kernel marks a replaced or removed binary; proctord could not run it again.
  if (absl::EndsWith(exe, " (deleted)")) {
    return absl::FailedPreconditionError(
        absl::StrCat("this program's executable ", exe,
                     " is gone (rebuilt while running?); it cannot be started again"));
  }
  return exe;
}

void AddKwargs(const std::map<std::string, Arg>& kwargs, v1::StartRequest& request) {
  for (const auto& [key, value] : kwargs) (*request.mutable_kwargs())[key] = value.str();
}

absl::StatusOr<std::string> ResolveCwd(const std::string& given) {
  // The daemon has a working directory of its own; a child works where this program does.
  std::error_code ec;
  std::filesystem::path here = std::filesystem::current_path(ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot get the current directory: ", ec.message()));
  }
  if (given.empty()) return here.string();
  std::filesystem::path cwd = (here / given).lexically_normal();
  if (!cwd.has_filename() && cwd != cwd.root_path()) cwd = cwd.parent_path();
  return cwd.string();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Process

Process::Process(ProcessOptions options) : options_(std::move(options)) {
  authkey_ = options_.authkey;
  if (authkey_.empty()) {
    authkey_ = Worker().id != 0 ? Worker().authkey : RandomBytes(kAuthkeyBytes);
  }
}

Process::Process(Self, uint64_t id) {
  current_ = true;
  started_ = true;
  id_ = id;
  pid_ = getpid();
  if (id == 0) {
    options_.name = "MainProcess";
    authkey_ = RandomBytes(kAuthkeyBytes);
  } else {
    authkey_ = Worker().authkey;
  }
}

Process::~Process() = default;

absl::Status Process::CheckUsable() const {
  if (closed_) return Misuse("process object is closed");
  return absl::OkStatus();
}

void Process::Update(const v1::Process& record) {
  record_ = record;
  id_ = record.id();
  pid_ = record.pid();
  if (options_.name.empty()) options_.name = record.name();
  if (current_) options_.daemon = record.daemon();
  if (child_ != nullptr && record.state() == v1::STATE_EXITED) child_->ended = true;
}

absl::Status Process::FillTarget(v1::StartRequest& request) const {
  std::optional<std::string> class_name;
  if (typeid(*this) != typeid(Process)) {
    class_name = Registry::Get().NameOfClass(std::type_index(typeid(*this)));
  }
  const Target& target = options_.target;
  if (!class_name.has_value() && !target.is_function()) {
    if (!target.empty()) {
      request.set_target(target.executable());
      for (const Arg& arg : options_.args) request.add_args(arg.str());
      AddKwargs(options_.kwargs, request);
      return absl::OkStatus();
    }
    if (typeid(*this) == typeid(Process)) return Misuse("nothing to run: give a target");
    std::string type = Demangle(typeid(*this).name());
    return Misuse(absl::StrCat("class ", type, " is not registered: add PROCTOR_PROCESS_CLASS(",
                               type, ") at namespace scope"));
  }

  // The spawn start method: this program again, told what to run by its arguments.
  std::string name;
  std::vector<std::string> args;
  if (class_name.has_value()) {
    name = *class_name;
    for (const Arg& arg : constructor_args_) args.push_back(arg.str());
  } else {
    if (!target.function_name().empty()) {
      name = target.function_name();
    } else if (std::optional<std::string> found =
                   Registry::Get().NameOfFunction(target.function())) {
      name = *found;
    } else {
      return Misuse(
          "the function given as target is not registered: add PROCTOR_FUNCTION(<function>) "
          "at namespace scope");
    }
    for (const Arg& arg : options_.args) args.push_back(arg.str());
    AddKwargs(options_.kwargs, request);
  }
  // Refused here rather than as exit code 1 in the child.
  if (absl::StatusOr<Entry> entry = Registry::Get().ByName(name); !entry.ok()) {
    return entry.status();
  }
  absl::StatusOr<std::string> exe = SelfExecutable();
  if (!exe.ok()) return exe.status();
  request.set_target(*exe);
  request.add_args(absl::StrCat(kRunFlag, name));
  request.add_args(absl::StrCat(kNargsFlag, args.size()));
  for (std::string& arg : args) request.add_args(std::move(arg));
  return absl::OkStatus();
}

absl::Status Process::start() {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (started_) return Misuse("cannot start a process twice");
  absl::StatusOr<std::shared_ptr<Runtime>> runtime = CurrentRuntime();
  if (!runtime.ok()) return runtime.status();

  v1::StartRequest request;
  if (absl::Status s = FillTarget(request); !s.ok()) return s;
  request.set_name(options_.name);
  request.set_daemon(options_.daemon);
  for (const std::string& entry : options_.env) request.add_env(entry);
  absl::StatusOr<std::string> cwd = ResolveCwd(options_.cwd);
  if (!cwd.ok()) return cwd.status();
  request.set_cwd(*cwd);
  request.set_authkey(authkey_);
  if (!(*runtime)->worker()) {
    absl::StatusOr<uint64_t> session = (*runtime)->SessionId();
    if (!session.ok()) return session.status();
    request.set_session(*session);
  }

  absl::StatusOr<v1::Process> started = (*runtime)->client().Start(request);
  if (!started.ok()) return started.status();
  started_ = true;
  child_ = std::make_shared<ChildState>(**runtime, started->id(), options_.daemon);
  Update(*started);
  StartForwarding(*child_);
  (*runtime)->Adopt(child_);
  InstallExitHandler();
  return absl::OkStatus();
}

void Process::run() {
  const Target& target = options_.target;
  if (target.is_function()) {
    std::optional<std::string> name = target.function_name();
    if (name->empty()) name = Registry::Get().NameOfFunction(target.function());
    if (!name.has_value()) {
      std::fprintf(stderr, "proctor: run(): the target function is not registered\n");
      return;
    }
    absl::StatusOr<Entry> entry = Registry::Get().ByName(*name);
    absl::StatusOr<int> ran =
        entry.ok()
            ? entry->invoke(entry->function, ToArgs(options_.args, options_.kwargs), entry->name)
            : absl::StatusOr<int>(entry.status());
    if (!ran.ok()) {
      std::fprintf(stderr, "proctor: run(): %s\n", std::string(ran.status().message()).c_str());
    }
    return;
  }
  if (!target.executable().empty()) {
    std::fprintf(stderr,
                 "proctor: run() does not run the executable target %s in this program; "
                 "use start()\n",
                 target.executable().c_str());
  }
}

absl::Status Process::join(std::optional<absl::Duration> timeout) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (current_) return Misuse("can only join a child process");
  if (!started_) return Misuse("can only join a started process");
  if (!child_->ended || !record_.has_exitcode()) {
    absl::StatusOr<v1::Process> joined = child_->runtime.client().Join(id_, timeout);
    if (!joined.ok()) return joined.status();
    Update(*joined);
    if (joined->state() != v1::STATE_EXITED) return absl::OkStatus();
  }
  child_->WaitForwarders();
  child_->runtime.Forget(child_.get());
  return absl::OkStatus();
}

absl::StatusOr<bool> Process::is_alive() {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (current_) return true;
  if (!started_ || child_->ended) return false;
  if (absl::Status s = Refresh(); !s.ok()) return s;
  return record_.state() == v1::STATE_RUNNING;
}

absl::Status Process::Signal(int sig, const char* verb) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (current_) return Misuse(absl::StrCat("can only ", verb, " a child process"));
  if (!started_) return Misuse(absl::StrCat("can only ", verb, " a started process"));
  if (child_->ended) return absl::OkStatus();
  v1::TerminateRequest request;
  request.set_id(id_);
  request.set_signal(sig);
  request.set_wait(false);
  absl::StatusOr<v1::Process> signalled = child_->runtime.client().Terminate(request);
  if (!signalled.ok()) return signalled.status();
  Update(*signalled);
  return absl::OkStatus();
}

absl::Status Process::terminate() { return Signal(SIGTERM, "terminate"); }

absl::Status Process::kill() { return Signal(SIGKILL, "kill"); }

absl::Status Process::close() {
  if (closed_ || current_) return absl::OkStatus();
  if (started_) {
    if (!child_->ended) {
      if (absl::Status s = Refresh(); !s.ok()) return s;
    }
    if (!child_->ended) {
      return Misuse(
          "Cannot close a process while it is still running. You should first call join() or "
          "terminate().");
    }
    child_->WaitForwarders();
    absl::Status released = child_->runtime.client().Release(id_);
    // Evicted already (retention) or released by someone else: forgotten all the same.
    if (!released.ok() && !absl::IsNotFound(released)) return released;
    child_->runtime.Forget(child_.get());
  }
  closed_ = true;
  return absl::OkStatus();
}

absl::Status Process::set_daemon(bool daemon) {
  if (started_) return Misuse("process has already started");
  options_.daemon = daemon;
  return absl::OkStatus();
}

std::optional<int> Process::exitcode() {
  if (!started_ || current_) return std::nullopt;
  if (!record_.has_exitcode() && !closed_) Refresh().IgnoreError();
  if (!record_.has_exitcode()) return std::nullopt;
  return record_.exitcode();
}

absl::Status Process::Refresh() {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (!started_ || id_ == 0) return Misuse("only a started process has a record");
  Client* client = nullptr;
  if (child_ != nullptr) {
    client = &child_->runtime.client();
  } else {
    absl::StatusOr<Client*> found = DefaultClient();
    if (!found.ok()) return found.status();
    client = *found;
  }
  absl::StatusOr<v1::Process> record = client->Status(id_);
  if (!record.ok()) return record.status();
  Update(*record);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// The running process itself, and the child's side of function and class targets.

Process& current_process() {
  Globals& g = G();
  {
    absl::MutexLock lock(&g.mu);
    if (g.current_process != nullptr) return *g.current_process;
  }
  // Made outside the lock: fetching a worker's record makes a call.
  auto* self = new Process(Process::Self{}, Worker().id);
  if (Worker().id != 0) self->Refresh().IgnoreError();
  absl::MutexLock lock(&g.mu);
  if (g.current_process == nullptr) {
    g.current_process = self;
  } else {
    delete self;  // another thread was first
  }
  return *g.current_process;
}

namespace {

absl::StatusOr<Args> ParseChildArgs(int argc, char** argv) {
  size_t nargs = 0;
  if (argc < 3 || !absl::StartsWith(argv[2], kNargsFlag) ||
      !absl::SimpleAtoi(argv[2] + std::strlen(kNargsFlag), &nargs) ||
      nargs > static_cast<size_t>(argc - 3)) {
    return absl::InvalidArgumentError(
        absl::StrCat(argv[1], " must be followed by ", kNargsFlag, "<N> and N arguments"));
  }
  std::vector<std::string> positional(argv + 3, argv + 3 + nargs);
  std::map<std::string, std::string> kwargs;
  for (int i = 3 + static_cast<int>(nargs); i < argc; ++i) {
    // proctord passes kwargs as --key=value.
    absl::string_view arg = argv[i];
    size_t eq = arg.find('=');
    if (!absl::StartsWith(arg, "--") || eq == absl::string_view::npos || eq == 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\" after the positional ones"));
    }
    kwargs[std::string(arg.substr(2, eq - 2))] = std::string(arg.substr(eq + 1));
  }
  return Args(std::move(positional), std::move(kwargs));
}

void ReportException(const char* type, const char* what) {
  Process& self = current_process();
  std::string name = self.name().empty() ? absl::StrCat(self.id()) : self.name();
  std::fflush(stdout);
  std::fprintf(stderr, "Process %s:\n%s: %s\n", name.c_str(), type, what);
}

}  // namespace

int internal::RunChild(int argc, char** argv) {
  std::string name = argv[1] + std::strlen(kRunFlag);
  absl::StatusOr<Args> args = ParseChildArgs(argc, argv);
  absl::StatusOr<Entry> entry =
      args.ok() ? Registry::Get().ByName(name) : absl::StatusOr<Entry>(args.status());
  if (!entry.ok()) {
    std::fprintf(stderr, "proctor: %s\n", std::string(entry.status().message()).c_str());
    return 1;
  }
  // The target's exceptions end here, as an uncaught exception ends a Python child: exit 1.
  try {
    if (entry->make != nullptr) {
      absl::StatusOr<std::unique_ptr<Process>> made = entry->make(*args);
      if (!made.ok()) {
        std::fprintf(stderr, "proctor: %s\n", std::string(made.status().message()).c_str());
        return 1;
      }
      // Kept for the life of the program: current_process() is this object, even at exit.
      Process* self = made->release();
      self->current_ = true;
      self->started_ = true;
      self->id_ = Worker().id;
      self->pid_ = getpid();
      if (Worker().id != 0) {
        self->authkey_ = Worker().authkey;
        if (self->name().empty()) self->Refresh().IgnoreError();
      }
      {
        Globals& g = G();
        absl::MutexLock lock(&g.mu);
        g.current_process = self;
      }
      self->run();
      return 0;
    }
    absl::StatusOr<int> code = entry->invoke(entry->function, *args, entry->name);
    if (!code.ok()) {
      std::fprintf(stderr, "proctor: %s\n", std::string(code.status().message()).c_str());
      return 1;
    }
    return *code;
  } catch (const std::exception& e) {
    ReportException(Demangle(typeid(e).name()).c_str(), e.what());
  } catch (...) {
    std::type_info* type = abi::__cxa_current_exception_type();
    ReportException(type != nullptr ? Demangle(type->name()).c_str() : "exception",
                    "(not a std::exception)");
  }
  return 1;
}

void MaybeRunChild(int argc, char** argv) {
  if (argc < 2 || !absl::StartsWith(argv[1], kRunFlag)) return;
  // Line by line, as to a terminal: the parent forwards each line while the child runs.
  std::setvbuf(stdout, nullptr, _IOLBF, BUFSIZ);
  std::exit(internal::RunChild(argc, argv));
}

absl::Status UseDaemon(const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<Runtime>> made = Runtime::Make(options);
  if (!made.ok()) return made.status();
  Globals& g = G();
  absl::MutexLock lock(&g.mu);
  g.current = *made;
  g.all.push_back(*std::move(made));
  return absl::OkStatus();
}

absl::StatusOr<Client*> DefaultClient() {
  absl::StatusOr<std::shared_ptr<Runtime>> runtime = CurrentRuntime();
  if (!runtime.ok()) return runtime.status();
  return &(*runtime)->client();
}

absl::StatusOr<uint64_t> DefaultSession() {
  absl::StatusOr<std::shared_ptr<Runtime>> runtime = CurrentRuntime();
  if (!runtime.ok()) return runtime.status();
  if ((*runtime)->worker()) return 0;
  return (*runtime)->SessionId();
}

}  // namespace proctor
