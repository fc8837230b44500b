// Declared services against a real proctord: started at start in dependency order, applied
// again by Reload, SIGHUP and `proctor reload`, listed by ListServices and `proctor services`,
// and kept across a restart of proctord.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// A declaration running `script` with /bin/sh, after `after`.
std::string Declaration(const std::string& script, const std::vector<std::string>& after = {}) {
  nlohmann::json json = {{"start", {{"target", "/bin/sh"}, {"args", {"-c", script}}}},
                         {"after", after}};
  return json.dump();
}

void Declare(TestDaemon& daemon, const std::string& name, const std::string& json) {
  ASSERT_TRUE(WriteFile(daemon.services_dir() + "/" + name + ".json", json));
}

std::map<std::string, v1::Service> Services(TestDaemon& daemon) {
  absl::StatusOr<std::vector<v1::Service>> listed = daemon.client().ListServices();
  EXPECT_TRUE(listed.ok()) << listed.status();
  std::map<std::string, v1::Service> by_name;
  for (const v1::Service& service : listed.value_or(std::vector<v1::Service>{})) {
    by_name[service.name()] = service;
  }
  return by_name;
}

// Waits until the service's process runs; returns its record.
v1::Process Running(TestDaemon& daemon, const std::string& name) {
  v1::Process process;
  EXPECT_TRUE(WaitFor([&] {
    std::map<std::string, v1::Service> services = Services(daemon);
    auto it = services.find(name);
    if (it == services.end() || it->second.process().state() != v1::STATE_RUNNING) return false;
    process = it->second.process();
    return true;
  })) << name << " does not run; log:\n"
      << daemon.Log();
  return process;
}

v1::ReloadResponse ReloadOk(TestDaemon& daemon) {
  absl::StatusOr<v1::ReloadResponse> reply = daemon.client().Reload();
  EXPECT_TRUE(reply.ok()) << reply.status();
  return reply.value_or(v1::ReloadResponse{});
}

// Services are not daemonic: at the end of a test they need not be given proctord's default
// shutdown grace.
std::vector<std::string> QuickStop() { return {"--shutdown-grace", "0.1"}; }

// A daemon whose services directory holds files before it starts.
class ServicesTest : public ::testing::Test {
 protected:
  std::vector<std::string> Flags() const {
    return {"--state-dir", state_.path(), "--services", services_.path(), "--listen",
            absl::StrCat("unix:", place_.path(), "/p.sock"), "--shutdown-grace", "0.1"};
  }
  void Write(const std::string& name, const std::string& json) {
    ASSERT_TRUE(WriteFile(services_.path() + "/" + name + ".json", json));
  }
  std::string Path(const std::string& name) const {
    return services_.path() + "/" + name + ".json";
  }

  TempDir state_;
  TempDir services_;
  TempDir place_;
};

TEST_F(ServicesTest, ServicesStartAtStartEachAfterWhatItIsAfter) {
  const std::string order = place_.path() + "/order";
  auto appending = [&](const std::string& name, const std::vector<std::string>& after) {
    return Declaration(absl::StrCat("echo ", name, " >> ", order, "; exec sleep 1000"), after);
  };
  Write("web", appending("web", {"app", "db"}));
  Write("app", appending("app", {"db"}));
  Write("db", appending("db", {}));
  Write("cron", appending("cron", {}));
  TestDaemon daemon(Flags());
  v1::Process db = Running(daemon, "db");
  v1::Process app = Running(daemon, "app");
  v1::Process web = Running(daemon, "web");
  Running(daemon, "cron");
  // Ids are handed out in start order: each started once what it is after had been.
  EXPECT_LT(db.id(), app.id());
  EXPECT_LT(app.id(), web.id());
  EXPECT_EQ(web.name(), "web");
  EXPECT_EQ(web.service(), "web");
  EXPECT_FALSE(web.has_parent_id() || web.has_parent_session()) << "top level";
  ASSERT_TRUE(WaitFor([&] { return ReadFile(order).size() == 16; })) << ReadFile(order);
  EXPECT_THAT(absl::StrSplit(ReadFile(order), '\n', absl::SkipEmpty()),
              UnorderedElementsAre("db", "app", "web", "cron"));
  EXPECT_THAT(daemon.Log(), HasSubstr("started db as id="));
}

TEST_F(ServicesTest, AServiceAfterOneThatSpeaksSdNotifyWaitsUntilItIsReady) {
  const std::string order = place_.path() + "/order";
  // db says READY=1 only after writing its line; web writes its own as it starts.
  Write("db", nlohmann::json({{"start",
                               {{"target", "/bin/sh"},
                                {"args", {"-c", absl::StrCat("sleep 0.3; echo db >> ", order,
                                                             "; ", NOTIFY_SEND_PATH,
                                                             " READY=1; exec sleep 1000")}},
                                {"notify", true}}}})
                  .dump());
  Write("web", Declaration(absl::StrCat("echo web >> ", order, "; exec sleep 1000"), {"db"}));
  TestDaemon daemon(Flags());
  Running(daemon, "web");
  // Its line comes a moment after it runs.
  ASSERT_TRUE(WaitFor([&] { return ReadFile(order).size() == 7; })) << ReadFile(order);
  EXPECT_EQ(ReadFile(order), "db\nweb\n") << "web started once db was ready";
  EXPECT_TRUE(Services(daemon)["db"].process().notify().ready());
}

TEST_F(ServicesTest, AServiceAfterOneThatFailedToStartDoesNotStart) {
  Write("db", R"({"start": {"target": "/nonexistent/db"}})");
  Write("web", Declaration("exec sleep 1000", {"db"}));
  Write("cron", Declaration("exec sleep 1000"));
  TestDaemon daemon(Flags());
  Running(daemon, "cron");
  std::map<std::string, v1::Service> services;
  ASSERT_TRUE(WaitFor([&] {
    services = Services(daemon);
    return !services["web"].error().empty();
  }));
  EXPECT_THAT(services["db"].error(), AllOf(HasSubstr(Path("db") + ": start: "),
                                          HasSubstr("/nonexistent/db")));
  EXPECT_FALSE(services["db"].has_process());
  EXPECT_THAT(services["web"].error(),
              AllOf(HasSubstr(Path("web") + ": after: \"db\" failed"), HasSubstr("not started")));
  EXPECT_FALSE(services["web"].has_process());
  absl::StatusOr<std::vector<v1::Process>> all = daemon.client().List({});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 1u) << "only cron was started";
}

TEST(ServicesReloadTest, AddedRemovedChangedAndUnchangedFiles) {
  TestDaemon daemon(QuickStop());
  Declare(daemon, "kept", Declaration("exec sleep 1000"));
  Declare(daemon, "edited", Declaration("exec sleep 1000"));
  Declare(daemon, "gone", Declaration("exec sleep 1000"));
  v1::ReloadResponse first = ReloadOk(daemon);
  EXPECT_THAT(first.started(), UnorderedElementsAre("kept", "edited", "gone"));
  EXPECT_THAT(first.errors(), IsEmpty());
  v1::Process kept = Running(daemon, "kept");
  v1::Process edited = Running(daemon, "edited");
  v1::Process gone = Running(daemon, "gone");

  Declare(daemon, "edited", Declaration("exec sleep 2000"));
  ASSERT_TRUE(std::filesystem::remove(daemon.services_dir() + "/gone.json"));
  Declare(daemon, "added", Declaration("exec sleep 1000"));
  v1::ReloadResponse second = ReloadOk(daemon);
  EXPECT_THAT(second.started(), ElementsAre("added"));
  EXPECT_THAT(second.stopped(), ElementsAre("gone"));
  EXPECT_THAT(second.restarted(), ElementsAre("edited"));
  EXPECT_THAT(second.unchanged(), ElementsAre("kept"));
  EXPECT_THAT(second.errors(), IsEmpty());

  v1::Process edited_again;
  ASSERT_TRUE(WaitFor([&] {
    edited_again = Running(daemon, "edited");
    return edited_again.id() != edited.id();
  }));
  EXPECT_THAT(edited_again.args(), ElementsAre("-c", "exec sleep 2000"));
  EXPECT_NE(edited_again.pid(), edited.pid());
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(edited.pid()); }));
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(gone.pid()); })) << "removed: terminated";
  absl::StatusOr<v1::Process> gone_record = daemon.client().Status(gone.id());
  ASSERT_TRUE(gone_record.ok()) << gone_record.status();
  EXPECT_EQ(gone_record->signal(), SIGTERM);
  Running(daemon, "added");
  v1::Process kept_again = Running(daemon, "kept");
  EXPECT_EQ(kept_again.id(), kept.id());
  EXPECT_EQ(kept_again.pid(), kept.pid());
  std::map<std::string, v1::Service> services = Services(daemon);
  EXPECT_FALSE(services.contains("gone"));
  EXPECT_EQ(services.size(), 3u);
  EXPECT_EQ(services["kept"].path(), daemon.services_dir() + "/kept.json");
}

TEST(ServicesReloadTest, BrokenFilesAreReportedWithTheirPathAndFieldAndTheOthersApply) {
  TestDaemon daemon(QuickStop());
  const std::string dir = daemon.services_dir();
  Declare(daemon, "syntax", R"({"start": {"target": "/bin/true"})");
  Declare(daemon, "unknown", R"({"start": {"target": "/bin/true", "argz": ["x"]}})");
  Declare(daemon, "untargeted", R"({"start": {"args": ["x"]}})");
  Declare(daemon, "good", Declaration("exec sleep 1000"));
  v1::ReloadResponse reply = ReloadOk(daemon);
  EXPECT_THAT(reply.started(), ElementsAre("good"));
  ASSERT_EQ(reply.errors_size(), 3) << absl::StrJoin(reply.errors(), "\n");
  EXPECT_THAT(reply.errors(0), HasSubstr(dir + "/syntax.json: not a proctor.v1.ServiceSpec"));
  EXPECT_THAT(reply.errors(1), AllOf(HasSubstr(dir + "/unknown.json: "), HasSubstr("argz")));
  EXPECT_EQ(reply.errors(2), dir + "/untargeted.json: start.target: is required: the program "
                                   "the service runs");
  Running(daemon, "good");
  std::map<std::string, v1::Service> services = Services(daemon);
  EXPECT_EQ(services["untargeted"].error(), reply.errors(2));
  EXPECT_FALSE(services["untargeted"].has_process());

  // A file that breaks leaves its service running as it was.
  v1::Process good = Running(daemon, "good");
  Declare(daemon, "good", R"({"start": {"target": "/bin/sleep"}, "aftr": []})");
  CommandResult cli = daemon.Cli({"reload"});
  EXPECT_EQ(cli.status, 1) << cli.out << cli.err;
  EXPECT_THAT(cli.err, HasSubstr("proctor: " + dir + "/good.json: "));
  EXPECT_THAT(cli.err, HasSubstr("aftr"));
  EXPECT_THAT(cli.out, HasSubstr("unchanged: -\n"));
  EXPECT_EQ(Running(daemon, "good").pid(), good.pid());
}

TEST(ServicesReloadTest, ACycleIsReportedNamingItAndNoneOfItStarts) {
  TestDaemon daemon(QuickStop());
  Declare(daemon, "a", Declaration("exec sleep 1000", {"b"}));
  Declare(daemon, "b", Declaration("exec sleep 1000", {"c"}));
  Declare(daemon, "c", Declaration("exec sleep 1000", {"a"}));
  Declare(daemon, "d", Declaration("exec sleep 1000"));
  v1::ReloadResponse reply = ReloadOk(daemon);
  EXPECT_THAT(reply.started(), ElementsAre("d"));
  ASSERT_EQ(reply.errors_size(), 3);
  EXPECT_EQ(reply.errors(0), daemon.services_dir() +
                                 "/a.json: after: a → b → c → a is a cycle: none of them can "
                                 "start first");
  Running(daemon, "d");
  absl::StatusOr<std::vector<v1::Process>> all = daemon.client().List({});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 1u);
}

TEST(ServicesReloadTest, SighupReloads) {
  TestDaemon daemon(QuickStop());
  Declare(daemon, "hup", Declaration("exec sleep 1000"));
  ASSERT_EQ(kill(daemon.pid(), SIGHUP), 0);
  v1::Process hup = Running(daemon, "hup");
  EXPECT_EQ(hup.name(), "hup");
  EXPECT_TRUE(WaitFor([&] {
    return daemon.Log().find("services in " + daemon.services_dir() + ": started hup;") !=
           std::string::npos;
  })) << daemon.Log();
}

TEST(ServicesReloadTest, AServiceThatEndedForGoodIsNotRestartedByAReloadOfItsUnchangedFile) {
  TestDaemon daemon(QuickStop());
  Declare(daemon, "once", Declaration("exit 0"));
  Declare(daemon, "missing", R"({"start": {"target": "/nonexistent/x"}})");
  ReloadOk(daemon);
  v1::Service once;
  ASSERT_TRUE(WaitFor([&] {
    once = Services(daemon)["once"];
    return once.process().state() == v1::STATE_EXITED;
  }));
  v1::ReloadResponse reply = ReloadOk(daemon);
  EXPECT_THAT(reply.unchanged(), ElementsAre("once"));
  // A start that failed is tried again: the program may have been installed since.
  EXPECT_THAT(reply.started(), ElementsAre("missing"));
  v1::Service again = Services(daemon)["once"];
  EXPECT_EQ(again.process().id(), once.process().id());
  EXPECT_EQ(again.process().state(), v1::STATE_EXITED);
}

TEST(ServicesReloadTest, TheCliListsServicesAsATableAndAsJson) {
  TestDaemon daemon(QuickStop());
  Declare(daemon, "web", Declaration("exec sleep 1000"));
  Declare(daemon, "broken", "{");
  CommandResult reload = daemon.Cli({"reload"});
  EXPECT_EQ(reload.status, 1) << reload.err;
  EXPECT_EQ(reload.out, "started: web\nstopped: -\nrestarted: -\nunchanged: -\n");
  EXPECT_THAT(reload.err, HasSubstr("proctor: " + daemon.services_dir() + "/broken.json: "));
  v1::Process web = Running(daemon, "web");

  CommandResult table = daemon.Cli({"services"});
  ASSERT_EQ(table.status, 0) << table.err;
  std::vector<std::string> lines = absl::StrSplit(table.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << table.out;
  EXPECT_THAT(lines[0], AllOf(HasSubstr("NAME"), HasSubstr("STATE"), HasSubstr("PID"),
                              HasSubstr("RESTARTS"), HasSubstr("LAST-EXIT")));
  EXPECT_THAT(absl::StrSplit(lines[1], ' ', absl::SkipEmpty()),
              ElementsAre("broken", "failed", "-", "-", "-"));
  EXPECT_THAT(absl::StrSplit(lines[2], ' ', absl::SkipEmpty()),
              ElementsAre("web", "running", absl::StrCat(web.pid()), "0", "-"));
  EXPECT_THAT(lines[3], HasSubstr("broken: " + daemon.services_dir() + "/broken.json: "));

  CommandResult json = daemon.Cli({"services", "--json"});
  ASSERT_EQ(json.status, 0) << json.err;
  nlohmann::json parsed = nlohmann::json::parse(json.out);
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0]["name"], "broken");
  EXPECT_EQ(parsed[0]["state"], "failed");
  EXPECT_TRUE(parsed[0]["process"].is_null());
  EXPECT_EQ(parsed[1]["name"], "web");
  EXPECT_EQ(parsed[1]["state"], "running");
  EXPECT_TRUE(parsed[1]["error"].is_null());
  EXPECT_EQ(parsed[1]["process"]["pid"], web.pid());
  EXPECT_EQ(parsed[1]["path"], daemon.services_dir() + "/web.json");

  CommandResult reload_json = daemon.Cli({"--json", "reload"});
  EXPECT_EQ(reload_json.status, 1);
  nlohmann::json decided = nlohmann::json::parse(reload_json.out);
  EXPECT_EQ(decided["unchanged"], nlohmann::json::array({"web"}));
  EXPECT_EQ(decided["errors"].size(), 1u);
}

TEST(ServicesReloadTest, AWorkersKeyMayNotReloadNorListServices) {
  TestDaemon daemon(QuickStop());
  v1::Process worker = StartOk(daemon.client(), {"/bin/sleep", "1000"});
  absl::StatusOr<Credentials> credentials = WorkerCredentials(worker.pid());
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(ClientOptions{.address = daemon.address(), .credentials = *credentials});
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<v1::ReloadResponse> reload = (*client)->Reload();
  EXPECT_EQ(reload.status().code(), absl::StatusCode::kPermissionDenied) << reload.status();
  EXPECT_THAT(reload.status().message(), HasSubstr("admin"));
  absl::StatusOr<std::vector<v1::Service>> listed = (*client)->ListServices();
  EXPECT_EQ(listed.status().code(), absl::StatusCode::kPermissionDenied) << listed.status();
}

TEST_F(ServicesTest, ServicesLiveOnAcrossARestartOfProctordWithoutBeingRestarted) {
  Write("db", Declaration("exec sleep 1000"));
  Write("web", Declaration("exec sleep 1000", {"db"}));
  TestDaemon daemon(Flags());
  v1::Process db = Running(daemon, "db");
  v1::Process web = Running(daemon, "web");
  const pid_t pid = daemon.pid();
  ASSERT_EQ(kill(pid, SIGUSR2), 0);
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("starting again") != std::string::npos; }));
  ASSERT_TRUE(daemon.Restarted()) << daemon.Log();
  v1::Process db_after = Running(daemon, "db");
  v1::Process web_after = Running(daemon, "web");
  EXPECT_EQ(db_after.id(), db.id());
  EXPECT_EQ(db_after.pid(), db.pid());
  EXPECT_EQ(web_after.id(), web.id());
  EXPECT_EQ(web_after.pid(), web.pid());
  EXPECT_THAT(daemon.Log(), HasSubstr("services: web runs on as id="));
  v1::ReloadResponse reply = ReloadOk(daemon);
  EXPECT_THAT(reply.unchanged(), UnorderedElementsAre("db", "web"));
  EXPECT_THAT(reply.started(), IsEmpty());
  EXPECT_THAT(reply.restarted(), IsEmpty());

  // A file changed while proctord was away is a change once it is back.
  Write("web", Declaration("exec sleep 2000", {"db"}));
  daemon.Kill();
  TestDaemon second(Flags());
  v1::Process web_changed;
  ASSERT_TRUE(WaitFor([&] {
    web_changed = Running(second, "web");
    return web_changed.id() != web.id();
  })) << second.Log();
  EXPECT_EQ(Running(second, "db").pid(), db.pid());
  EXPECT_TRUE(WaitFor([&] { return !IsAlive(web.pid()); }));
}

}  // namespace
}  // namespace proctor::testing
