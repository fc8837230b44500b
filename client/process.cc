#include "client/process.h"

#include <cxxabi.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <set>
#include <stop_token>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "client/credentials.h"
#include "client/sync.h"
#include "common/authkey.h"
#include "common/environment_names.h"

namespace proctor {
namespace {

constexpr char kRunFlag[] = "--proctor-run=";
constexpr char kNargsFlag[] = "--proctor-nargs=";

// What the library tells a child about its place in the names and about its parent (see
// "Environment" in process.h).
constexpr char kIdentityEnv[] = "PROCTOR_PROCESS_IDENTITY";
constexpr char kParentIdEnv[] = "PROCTOR_PARENT_ID";
constexpr char kParentPidEnv[] = "PROCTOR_PARENT_PID";
constexpr char kParentNameEnv[] = "PROCTOR_PARENT_NAME";
constexpr char kParentStampEnv[] = "PROCTOR_PARENT_STAMP";

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

// This program's place in the names (see "Names" in process.h): "" in a main program, "3:1"
// in the worker the library named Process-3:1, empty (proctord names) in other workers.
const std::optional<std::string>& OwnIdentity() {
  static const std::optional<std::string>* identity = [] {
    if (Worker().id == 0) return new std::optional<std::string>("");
    const char* given = std::getenv(kIdentityEnv);
    if (given == nullptr || *given == '\0') return new std::optional<std::string>;
    return new std::optional<std::string>(given);
  }();
  return *identity;
}

// multiprocessing's _process_counter: the number of the next process this program makes.
std::atomic<uint64_t>& ProcessCounter() {
  static std::atomic<uint64_t> counter = 0;
  return counter;
}

std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return std::string(absl::StripAsciiWhitespace(text));
}

// When `pid` started, in clock ticks after boot (field 22 of /proc/<pid>/stat); nothing when
// there is no such process.
std::optional<uint64_t> StartTicks(pid_t pid) {
  std::string stat = ReadSmallFile(absl::StrCat("/proc/", pid, "/stat"));
  // The command name, in parentheses, may hold spaces and parentheses of its own.
  size_t end_of_name = stat.rfind(')');
  if (end_of_name == std::string::npos) return std::nullopt;
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(stat).substr(end_of_name + 1), ' ', absl::SkipEmpty());
  uint64_t ticks = 0;
  // Fields after the name start at 3 (state).
  if (fields.size() < 20 || !absl::SimpleAtoi(fields[22 - 3], &ticks)) return std::nullopt;
  return ticks;
}

// The boot and pid namespace this program runs in: processes that share them see the same
// pids.
std::string HostPlace() {
  std::error_code ec;
  std::string pid_namespace = std::filesystem::read_symlink("/proc/self/ns/pid", ec).string();
  return absl::StrCat(ReadSmallFile("/proc/sys/kernel/random/boot_id"), "/", pid_namespace);
}

// This process, told apart from any other that has had or will have its pid:
// "<boot id>/<pid namespace>/<start ticks>".
const std::string& OwnStamp() {
  static const std::string* stamp =
      new std::string(absl::StrCat(HostPlace(), "/", StartTicks(getpid()).value_or(0)));
  return *stamp;
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

// How a child watches its parent (parent_process()).
struct ParentLink {
  ~ParentLink() {
    if (ended_fd >= 0) close(ended_fd);
  }
  // Where the parent runs on this host: readable once it has ended (a pidfd, or an eventfd
  // already written when it had ended before we looked). -1 elsewhere.
  int ended_fd = -1;
};

// What outlives a Process object: the child's forwarders, and whether it has ended, for
// join() and for the exit handler.
struct ChildState {
  // Takes `ended_fd`, an eventfd.
  ChildState(Runtime& runtime, uint64_t id, bool daemon, int ended_fd)
      : runtime(runtime), id(id), daemon(daemon), ended_fd(ended_fd) {}
  // A child dropped unjoined (it ended and its Process is gone) may still have forwarder
  // threads that have written everything but were never joined.
  ~ChildState() {
    close(ended_fd);
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

  // Called by whoever learns that the process has ended; the first call makes the sentinel
  // readable.
  void NoteEnded() {
    if (ended.exchange(true)) return;
    uint64_t one = 1;
    // Cannot fail: the counter is far from full and the descriptor is ours.
    [[maybe_unused]] ssize_t n = write(ended_fd, &one, sizeof(one));
  }

  Runtime& runtime;
  const uint64_t id;
  const bool daemon;
  const int ended_fd;  // the sentinel: readable once `ended`
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

  // The session if it is open, without opening it.
  std::optional<uint64_t> OpenSessionId() {
    absl::MutexLock lock(&mu_);
    if (session_ == nullptr) return std::nullopt;
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

// Writes what a child wrote to one of our streams, whole lines at a time, so that lines of
// different children are not cut into each other.
class LineWriter {
 public:
  explicit LineWriter(FILE* out) : out_(out) {}
  void Add(std::string_view chunk) {
    pending_.append(chunk);
    size_t end = pending_.rfind('\n');
    if (end == std::string::npos) return;
    Emit(absl::string_view(pending_).substr(0, end + 1));
    pending_.erase(0, end + 1);
  }
  // What is left of a last line without its newline.
  void Flush() {
    if (!pending_.empty()) Emit(pending_);
    pending_.clear();
  }

 private:
  void Emit(absl::string_view text) {
    // One fwrite is one locked stdio operation: whole against the program's own output.
    std::fwrite(text.data(), 1, text.size(), out_);
    std::fflush(out_);
  }

  FILE* const out_;
  std::string pending_;
};

// Copies one stream of a child to ours.
void Forward(ChildState& child, v1::Stream stream, FILE* out) {
  v1::LogsRequest request;
  request.set_id(child.id);
  request.set_stream(stream);
  request.set_follow(true);
  LineWriter writer(out);
  absl::Status status = child.runtime.client().Logs(
      request, [&](std::string_view chunk) { writer.Add(chunk); },
      child.stop_forwarding.get_token());
  writer.Flush();
  // A followed stream ends without error only once the process has ended.
  if (status.ok()) child.NoteEnded();
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
        if (joined.ok() && joined->state() == v1::STATE_EXITED) child->NoteEnded();
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

// Each Barrier the child is given has it as a bound party from its start (client/sync.h).
void AddBarriers(v1::StartRequest& request) {
  std::set<uint64_t> barriers;
  for (const std::string& arg : request.args()) {
    if (std::optional<uint64_t> id = internal::BarrierOfArg(arg)) barriers.insert(*id);
  }
  for (const auto& [key, value] : request.kwargs()) {
    if (std::optional<uint64_t> id = internal::BarrierOfArg(value)) barriers.insert(*id);
  }
  for (uint64_t id : barriers) request.add_barriers(id);
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
  // Numbered at construction, whether it is ever started or not, as in multiprocessing.
  uint64_t number = ++ProcessCounter();
  if (const std::optional<std::string>& own = OwnIdentity(); own.has_value()) {
    identity_ = own->empty() ? absl::StrCat(number) : absl::StrCat(*own, ":", number);
  }
}

Process::Process(Parent, uint64_t id, std::optional<pid_t> pid, std::string name,
                 std::shared_ptr<internal::ParentLink> link)
    : parent_link_(std::move(link)) {
  parent_ = true;
  started_ = true;
  id_ = id;
  pid_ = pid;
  options_.name = std::move(name);
}

Process::Process(Self, uint64_t id) {
  current_ = true;
  started_ = true;
  id_ = id;
  pid_ = getpid();
  if (id != 0) identity_ = OwnIdentity().value_or("");
  if (id == 0) {
    options_.name = "MainProcess";
    authkey_ = RandomBytes(kAuthkeyBytes);
  } else {
    authkey_ = Worker().authkey;
  }
}

Process::~Process() = default;

const std::string& Process::name() const {
  if (!options_.name.empty() || identity_.empty()) return options_.name;
  if (default_name_.empty()) {
    // multiprocessing names a subclass after its class, unqualified: Piao-1.
    std::string type = typeid(*this) == typeid(Process) ? "Process"
                                                        : Demangle(typeid(*this).name());
    if (type.find('<') == std::string::npos) {
      if (size_t scope = type.rfind("::"); scope != std::string::npos) type.erase(0, scope + 2);
    }
    default_name_ = absl::StrCat(type, "-", identity_);
  }
  return default_name_;
}

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
  if (child_ != nullptr && record.state() == v1::STATE_EXITED) child_->NoteEnded();
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

absl::StatusOr<Process::PreparedStart> Process::PrepareStart() {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (started_) return Misuse("cannot start a process twice");
  absl::StatusOr<std::shared_ptr<Runtime>> runtime = CurrentRuntime();
  if (!runtime.ok()) return runtime.status();
  PreparedStart prepared{.runtime = *runtime};
  v1::StartRequest& request = prepared.request;
  if (absl::Status s = FillTarget(request); !s.ok()) return s;
  AddBarriers(request);
  request.set_name(name());
  request.set_daemon(options_.daemon);
  FillEnvironment(request);
  absl::StatusOr<std::string> cwd = ResolveCwd(options_.cwd);
  if (!cwd.ok()) return cwd.status();
  request.set_cwd(*cwd);
  request.set_authkey(authkey_);
  if (!prepared.runtime->worker()) {
    absl::StatusOr<uint64_t> session = prepared.runtime->SessionId();
    if (!session.ok()) return session.status();
    request.set_session(*session);
  }
  // Made before the Start: once the process runs, there must be a sentinel to give.
  prepared.ended_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (prepared.ended_fd < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot make the process's sentinel: eventfd: ", std::strerror(errno)));
  }
  return prepared;
}

void Process::Started(PreparedStart& prepared, const v1::Process& started) {
  started_ = true;
  child_ = std::make_shared<ChildState>(*prepared.runtime, started.id(), options_.daemon,
                                        std::exchange(prepared.ended_fd, -1));
  Update(started);
  prepared.runtime->Adopt(child_);
  InstallExitHandler();
}

absl::Status Process::start() {
  absl::StatusOr<PreparedStart> prepared = PrepareStart();
  if (!prepared.ok()) return prepared.status();
  absl::StatusOr<v1::Process> started = prepared->runtime->client().Start(prepared->request);
  if (!started.ok()) {
    ::close(prepared->ended_fd);
    return started.status();
  }
  Started(*prepared, *started);
  StartForwarding(*child_);
  return absl::OkStatus();
}

absl::Status Process::start_and_join() {
  absl::StatusOr<PreparedStart> prepared = PrepareStart();
  if (!prepared.ok()) return prepared.status();
  // Whole lines, as the forwarders of start() write them; each stream on its own.
  LineWriter out(stdout), err(stderr);
  absl::StatusOr<v1::Process> ended = prepared->runtime->client().Run(
      prepared->request,
      [&](v1::Stream stream, std::string_view data) {
        (stream == v1::STREAM_STDERR ? err : out).Add(data);
      },
      [&](const v1::Process& started) { Started(*prepared, started); });
  out.Flush();
  err.Flush();
  if (!started_) {
    ::close(prepared->ended_fd);
    return ended.ok() ? absl::InternalError("Run ended without a started record")
                      : ended.status();
  }
  if (!ended.ok()) return ended.status();
  Update(*ended);
  child_->runtime.Forget(child_.get());
  return absl::OkStatus();
}

void Process::FillEnvironment(v1::StartRequest& request) {
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (absl::StartsWith(*entry, kEnvPrefix)) continue;
    request.add_env(*entry);
  }
  if (!identity_.empty()) request.add_env(absl::StrCat(kIdentityEnv, "=", identity_));
  Process& self = current_process();
  request.add_env(absl::StrCat(kParentIdEnv, "=", self.id()));
  request.add_env(absl::StrCat(kParentPidEnv, "=", getpid()));
  request.add_env(absl::StrCat(kParentNameEnv, "=", self.name()));
  request.add_env(absl::StrCat(kParentStampEnv, "=", OwnStamp()));
  for (const std::string& entry : options_.env) request.add_env(entry);
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
  // Python's join(-1) looks and returns; proctord would refuse a negative timeout.
  if (timeout.has_value()) timeout = std::max(*timeout, absl::ZeroDuration());
  if (parent_) return JoinParent(timeout);
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
  if (parent_) return ParentAlive();
  if (!started_ || child_->ended) return false;
  if (absl::Status s = Refresh(); !s.ok()) return s;
  return record_.state() == v1::STATE_RUNNING;
}

absl::Status Process::Signal(int sig, const char* verb, Reach reach,
                             std::optional<absl::Duration> grace) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (current_ || parent_) return Misuse(absl::StrCat("can only ", verb, " a child process"));
  if (!started_) return Misuse(absl::StrCat("can only ", verb, " a started process"));
  if (child_->ended) return absl::OkStatus();
  v1::TerminateRequest request;
  request.set_id(id_);
  request.set_signal(sig);
  if (grace.has_value()) {
    *request.mutable_grace() = DurationToProto(*grace);
  } else {
    request.set_escalate(false);  // the signal and nothing more
  }
  request.set_wait(false);
  request.set_tree(reach == Reach::kTree);
  absl::StatusOr<v1::Process> signalled = child_->runtime.client().Terminate(request);
  if (!signalled.ok()) return signalled.status();
  Update(*signalled);
  return absl::OkStatus();
}

absl::Status Process::terminate(Reach reach) {
  return Signal(SIGTERM, "terminate", reach, std::nullopt);
}

absl::Status Process::kill(Reach reach) {
  return Signal(SIGKILL, "kill", reach, absl::ZeroDuration());
}

absl::Status Process::interrupt(Reach reach) {
  return Signal(SIGINT, "interrupt", reach, std::nullopt);
}

absl::Status Process::terminate_and_wait(absl::Duration grace, Reach reach) {
  if (absl::Status s = Signal(SIGTERM, "terminate", reach, grace); !s.ok()) return s;
  // Joined here rather than by Terminate's own wait, which would have to answer within one
  // call timeout whatever the grace.
  return join();
}

absl::StatusOr<int> Process::sentinel() const {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (parent_) {
    if (parent_link_->ended_fd < 0) {
      return absl::UnimplementedError(
          "the parent process does not run on this host: it has no sentinel here");
    }
    return parent_link_->ended_fd;
  }
  if (!started_ || current_) return Misuse("process not started");
  return child_->ended_fd;
}

absl::Status Process::close() {
  if (closed_ || current_ || parent_) return absl::OkStatus();
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
  if (!started_ || current_ || parent_) return std::nullopt;
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

using internal::ParentLink;

absl::Status ParentUnknown() {
  return absl::UnimplementedError(
      "the parent process is a client program on another host: whether it still runs is not "
      "known here");
}

absl::Status AboutParent(uint64_t id, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("cannot ask proctord about parent process ",
                                                  id, ": ", status.message()));
}

// Opens a pidfd of the parent when `stamp` (its OwnStamp()) says it runs on this host and
// pid is still it. Leaves the link without a descriptor when it runs elsewhere.
void WatchLocalParent(ParentLink& link, pid_t pid, absl::string_view stamp) {
  size_t last = stamp.rfind('/');
  uint64_t ticks = 0;
  if (pid <= 1 || last == absl::string_view::npos || stamp.substr(0, last) != HostPlace() ||
      !absl::SimpleAtoi(stamp.substr(last + 1), &ticks)) {
    return;
  }
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  int err = errno;
  // The pidfd first, then the start time: if the pid was reused before the pidfd was
  // opened, the start time is the newcomer's, and the parent is known to have ended.
  if (pidfd >= 0 && StartTicks(pid) == ticks) {
    link.ended_fd = pidfd;
    return;
  }
  if (pidfd >= 0) close(pidfd);
  if (pidfd < 0 && err != ESRCH) return;  // no pidfds here (ENOSYS): ask proctord instead
  link.ended_fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);  // ended before we looked
}

// What parent_process() is made from.
struct ParentFacts {
  uint64_t id = 0;
  std::optional<pid_t> pid;
  std::string name;
  std::shared_ptr<ParentLink> link = std::make_shared<ParentLink>();
};

std::optional<ParentFacts> FindParent() {
  if (Worker().id == 0) return std::nullopt;
  ParentFacts facts;
  auto& [id, pid, name, link] = facts;
  if (const char* stamp = std::getenv(kParentStampEnv); stamp != nullptr) {
    // Started by this library: the parent said who it is.
    pid_t parent_pid = 0;
    if (!absl::SimpleAtoi(Env(kParentIdEnv), &id)) id = 0;
    if (absl::SimpleAtoi(Env(kParentPidEnv), &parent_pid)) pid = parent_pid;
    name = Env(kParentNameEnv);
    if (pid.has_value()) WatchLocalParent(*link, *pid, stamp);
  } else {
    // Started otherwise (the CLI, a client of its own): the record says whose child it is.
    id = current_process().parent_id();
    if (id == 0) return std::nullopt;
    if (absl::StatusOr<Client*> client = DefaultClient(); client.ok()) {
      if (absl::StatusOr<v1::Process> record = (*client)->Status(id); record.ok()) {
        pid = record->pid();
        name = record->name();
      }
    }
  }
  return facts;
}

}  // namespace

Process* parent_process() {
  static Process* parent = [] () -> Process* {
    std::optional<ParentFacts> found = FindParent();
    if (!found.has_value()) return nullptr;
    return new Process(Process::Parent{}, found->id, found->pid, std::move(found->name),
                       std::move(found->link));
  }();
  return parent;
}

absl::StatusOr<bool> Process::ParentAlive() {
  if (parent_link_->ended_fd >= 0) {
    pollfd ended = {parent_link_->ended_fd, POLLIN, 0};
    int ready = poll(&ended, 1, 0);
    if (ready < 0) {
      return absl::InternalError(absl::StrCat("poll on the parent's pidfd: ", std::strerror(errno)));
    }
    return ready == 0;
  }
  if (id_ == 0) return ParentUnknown();
  absl::StatusOr<Client*> client = DefaultClient();
  if (!client.ok()) return AboutParent(id_, client.status());
  absl::StatusOr<v1::Process> record = (*client)->Status(id_);
  if (!record.ok()) return AboutParent(id_, record.status());
  return record->state() == v1::STATE_RUNNING;
}

absl::Status Process::JoinParent(std::optional<absl::Duration> timeout) {
  if (parent_link_->ended_fd >= 0) {
    absl::Time deadline = timeout.has_value() ? absl::Now() + *timeout : absl::InfiniteFuture();
    for (;;) {
      absl::Duration left = deadline - absl::Now();
      int wait_ms = left == absl::InfiniteDuration()
                        ? -1
                        : static_cast<int>(std::clamp<int64_t>(
                              absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))),
                              0, std::numeric_limits<int>::max()));
      pollfd ended = {parent_link_->ended_fd, POLLIN, 0};
      int ready = poll(&ended, 1, wait_ms);
      if (ready >= 0) return absl::OkStatus();  // ended, or not within the timeout
      if (errno != EINTR) {
        return absl::InternalError(
            absl::StrCat("poll on the parent's pidfd: ", std::strerror(errno)));
      }
    }
  }
  if (id_ == 0) return ParentUnknown();
  absl::StatusOr<Client*> client = DefaultClient();
  if (!client.ok()) return AboutParent(id_, client.status());
  absl::StatusOr<v1::Process> joined = (*client)->Join(id_, timeout);
  if (!joined.ok()) return AboutParent(id_, joined.status());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint64_t>> active_children() {
  std::vector<std::shared_ptr<Runtime>> runtimes;
  {
    Globals& g = G();
    absl::MutexLock lock(&g.mu);
    runtimes = g.all;
  }
  std::vector<uint64_t> alive;
  for (const std::shared_ptr<Runtime>& runtime : runtimes) {
    std::vector<std::shared_ptr<ChildState>> children = runtime->Children();
    std::erase_if(children, [](const std::shared_ptr<ChildState>& c) { return c->ended.load(); });
    if (children.empty()) continue;
    v1::StatusRequest filter;
    filter.set_state(v1::STATE_RUNNING);
    if (runtime->worker() && Worker().id != 0) {
      filter.set_parent_id(Worker().id);
    } else if (std::optional<uint64_t> session = runtime->OpenSessionId(); session.has_value()) {
      filter.set_parent_session(*session);
    }
    absl::StatusOr<std::vector<v1::Process>> running = runtime->client().List(filter);
    if (!running.ok()) return running.status();
    for (const std::shared_ptr<ChildState>& child : children) {
      if (std::any_of(running->begin(), running->end(),
                      [&](const v1::Process& p) { return p.id() == child->id; })) {
        alive.push_back(child->id);
      }
    }
  }
  return alive;
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
  // The child numbers its own children from 1, whatever static objects took numbers before.
  ProcessCounter() = 0;
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
      // Rebuilding it took a number; it is the parent's object again, with the parent's name.
      ProcessCounter() = 0;
      self->identity_ = OwnIdentity().value_or("");
      self->default_name_.clear();
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
