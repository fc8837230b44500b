#include "server/service_specs.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace proctor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

ServiceFile Parse(const std::string& name, const std::string& json) {
  return ParseServiceFile(name, "/d/" + name + ".json", json);
}

// A directory of services whose declarations are given as JSON, checked together.
ServiceDirectory Resolved(const std::map<std::string, std::string>& files) {
  ServiceDirectory directory;
  for (const auto& [name, json] : files) directory.services[name] = Parse(name, json);
  ResolveDependencies(directory);
  return directory;
}

std::string After(const std::string& names) {
  return R"({"start": {"target": "/bin/true"}, "after": [)" + names + "]}";
}

class ServiceDirTest : public ::testing::Test {
 protected:
  ServiceDirTest() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "proctor-services-XXXXXX").string();
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  ~ServiceDirTest() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& file, const std::string& content) {
    std::ofstream(dir_ + "/" + file) << content;
  }

  std::string dir_;
};

TEST(ServiceNameTest, LettersDigitsAndDashUnderscoreDotAtUpTo64Bytes) {
  EXPECT_TRUE(IsServiceName("web"));
  EXPECT_TRUE(IsServiceName("getty@tty1"));
  EXPECT_TRUE(IsServiceName("a-b_c.d"));
  EXPECT_TRUE(IsServiceName(std::string(64, 'x')));
  EXPECT_FALSE(IsServiceName(std::string(65, 'x')));
  EXPECT_FALSE(IsServiceName(""));
  EXPECT_FALSE(IsServiceName("a b"));
  EXPECT_FALSE(IsServiceName("a/b"));
  EXPECT_FALSE(IsServiceName("é"));
}

TEST(ServiceFileTest, AValidDeclarationHasADigestAndNoError) {
  ServiceFile file = Parse("web", R"({"start": {"target": "/bin/sleep", "args": ["100"],
      "restart": {"mode": "ON_FAILURE", "initialBackoff": "0.5s"}}, "after": ["db"]})");
  EXPECT_EQ(file.error, "");
  EXPECT_EQ(file.name, "web");
  EXPECT_EQ(file.path, "/d/web.json");
  EXPECT_EQ(file.spec.start().target(), "/bin/sleep");
  EXPECT_EQ(file.spec.start().restart().mode(), v1::RestartPolicy::ON_FAILURE);
  EXPECT_EQ(file.spec.start().restart().initial_backoff().nanos(), 500'000'000);
  EXPECT_THAT(file.spec.after(), ElementsAre("db"));
  EXPECT_FALSE(file.digest.empty());
}

TEST(ServiceFileTest, JsonThatDoesNotParseIsAnErrorNamingTheFile) {
  ServiceFile file = Parse("web", R"({"start": {"target": "/bin/true"})");
  EXPECT_THAT(file.error, StartsWith("/d/web.json: not a proctor.v1.ServiceSpec in JSON: "));
  EXPECT_EQ(file.error.find('\n'), std::string::npos) << "one line: " << file.error;
  EXPECT_TRUE(file.digest.empty());
}

TEST(ServiceFileTest, AnUnknownFieldIsAnErrorNamingIt) {
  EXPECT_THAT(Parse("web", R"({"start": {"target": "/bin/true", "targte": "x"}})").error,
              AllOf(StartsWith("/d/web.json: "), HasSubstr("targte")));
  EXPECT_THAT(Parse("web", R"({"start": {"target": "/bin/true"}, "before": []})").error,
              AllOf(StartsWith("/d/web.json: "), HasSubstr("before")));
}

TEST(ServiceFileTest, AValueOfTheWrongTypeIsAnErrorNamingTheField) {
  EXPECT_THAT(Parse("web", R"({"start": {"target": 3}})").error,
              AllOf(StartsWith("/d/web.json: "), HasSubstr("start.target")));
  EXPECT_THAT(Parse("web", R"({"start": {"target": "x", "restart": {"mode": "SOMETIMES"}}})")
                  .error,
              HasSubstr("start.restart.mode"));
}

TEST(ServiceFileTest, TheTargetIsRequired) {
  EXPECT_EQ(Parse("web", R"({"start": {"args": ["x"]}})").error,
            "/d/web.json: start.target: is required: the program the service runs");
  EXPECT_THAT(Parse("web", "{}").error, StartsWith("/d/web.json: start.target: is required"));
}

TEST(ServiceFileTest, NameSessionDaemonAndBarriersMustBeUnset) {
  EXPECT_THAT(Parse("web", R"({"start": {"target": "x", "name": "other"}})").error,
              AllOf(StartsWith("/d/web.json: start.name: must be unset"), HasSubstr("\"web\"")));
  EXPECT_THAT(Parse("web", R"({"start": {"target": "x", "session": "7"}})").error,
              StartsWith("/d/web.json: start.session: must be unset"));
  EXPECT_THAT(Parse("web", R"({"start": {"target": "x", "daemon": true}})").error,
              StartsWith("/d/web.json: start.daemon: must be unset"));
  EXPECT_THAT(Parse("web", R"({"start": {"target": "x", "barriers": ["3"]}})").error,
              StartsWith("/d/web.json: start.barriers: must be unset"));
}

TEST(ServiceFileTest, ValuesStartWouldRefuseAreRefused) {
  EXPECT_THAT(Parse("web", R"({"start": {"target": "x", "watchdog": "-1s"}})").error,
              AllOf(StartsWith("/d/web.json: start.watchdog"), HasSubstr("negative")));
  EXPECT_THAT(Parse("web", R"({"start": {"target": "x", "watchdog": "0.001s"}})").error,
              AllOf(StartsWith("/d/web.json: start.watchdog"), HasSubstr("shorter")));
}

TEST(ServiceFileTest, AServiceCannotBeAfterItself) {
  EXPECT_EQ(Parse("web", After(R"("db", "web")")).error,
            "/d/web.json: after[1]: a service cannot be after itself");
}

TEST(ServiceDigestTest, EqualDeclarationsHaveEqualDigestsWhateverTheirSpelling) {
  ServiceFile a = Parse("web", R"({"start": {"target": "x", "kwargs": {"a": "1", "b": "2"}},
      "after": ["db", "cache"]})");
  ServiceFile b = Parse("web", R"({"after": ["cache", "db"],
      "start": {"kwargs": {"b": "2", "a": "1"}, "target": "x"}})");
  ASSERT_EQ(a.error, "");
  ASSERT_EQ(b.error, "");
  EXPECT_EQ(a.digest, b.digest);
  ServiceFile c = Parse("web", R"({"start": {"target": "x", "kwargs": {"a": "1", "b": "3"}},
      "after": ["db", "cache"]})");
  EXPECT_NE(a.digest, c.digest);
  ServiceFile d = Parse("web", R"({"start": {"target": "x", "args": ["1", "2"]}})");
  ServiceFile e = Parse("web", R"({"start": {"target": "x", "args": ["2", "1"]}})");
  EXPECT_NE(d.digest, e.digest) << "the order of arguments means something";
}

TEST(ResolveDependenciesTest, EachServiceComesAfterWhatItIsAfter) {
  ServiceDirectory directory = Resolved({{"web", After(R"("app", "db")")},
                                         {"app", After(R"("db")")},
                                         {"db", After("")},
                                         {"cron", After("")}});
  EXPECT_THAT(directory.Errors(), IsEmpty());
  // Depth first in name order: app needs db first; cron and web follow.
  EXPECT_THAT(directory.order, ElementsAre("db", "app", "cron", "web"));
}

TEST(ResolveDependenciesTest, AfterANameWithNoServiceIsAnErrorOfThatService) {
  ServiceDirectory directory = Resolved({{"web", After(R"("db", "dbb")")}, {"db", After("")}});
  EXPECT_EQ(directory.services.at("web").error,
            "/d/web.json: after[1]: \"dbb\" names no service (there is no dbb.json)");
  EXPECT_THAT(directory.order, ElementsAre("db"));
}

TEST(ResolveDependenciesTest, ACycleIsNamedAndNoneOfItStartsNorWhatIsAfterIt) {
  ServiceDirectory directory = Resolved({{"a", After(R"("b")")},
                                         {"b", After(R"("c")")},
                                         {"c", After(R"("a")")},
                                         {"d", After(R"("c")")},
                                         {"e", After("")}});
  for (const std::string name : {"a", "b", "c"}) {
    EXPECT_EQ(directory.services.at(name).error,
              "/d/" + name +
                  ".json: after: a → b → c → a is a cycle: none of them can start first");
  }
  EXPECT_THAT(directory.services.at("d").error,
              StartsWith("/d/d.json: after[0]: \"c\" cannot be used"));
  EXPECT_THAT(directory.order, ElementsAre("e"));
}

TEST(ResolveDependenciesTest, ServicesAfterABrokenFileDoNotStartDownTheWholeChain) {
  ServiceDirectory directory = Resolved({{"db", "not json"},
                                         {"app", After(R"("db")")},
                                         {"web", After(R"("app")")},
                                         {"cron", After("")}});
  EXPECT_THAT(directory.services.at("db").error, StartsWith("/d/db.json: not a"));
  EXPECT_THAT(directory.services.at("app").error,
              StartsWith("/d/app.json: after[0]: \"db\" cannot be used"));
  EXPECT_THAT(directory.services.at("web").error,
              StartsWith("/d/web.json: after[0]: \"app\" cannot be used"));
  EXPECT_THAT(directory.order, ElementsAre("cron"));
  EXPECT_EQ(directory.Errors().size(), 3u);
}

TEST_F(ServiceDirTest, AMissingDirectoryDeclaresNothing) {
  absl::StatusOr<ServiceDirectory> loaded = LoadServiceDirectory(dir_ + "/nowhere");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->services.empty());
  EXPECT_TRUE(loaded->order.empty());
}

TEST_F(ServiceDirTest, ADirectoryThatIsAFileIsAnErrorNamingIt) {
  Write("plain", "x");
  absl::StatusOr<ServiceDirectory> loaded = LoadServiceDirectory(dir_ + "/plain");
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr(dir_ + "/plain"));
}

TEST_F(ServiceDirTest, OneServicePerJsonFileOtherFilesIgnoredMisnamedOnesReported) {
  Write("web.json", After(R"("db")"));
  Write("db.json", After(""));
  Write(".hidden.json", "not even json");
  Write("notes.txt", "not a service");
  Write("web.json~", "an editor's backup");
  Write("bad name.json", After(""));
  std::filesystem::create_directory(dir_ + "/sub.json");
  absl::StatusOr<ServiceDirectory> loaded = LoadServiceDirectory(dir_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->services.size(), 2u);
  EXPECT_THAT(loaded->order, ElementsAre("db", "web"));
  EXPECT_EQ(loaded->services.at("web").path, dir_ + "/web.json");
  ASSERT_EQ(loaded->stray_errors.size(), 1u);
  EXPECT_THAT(loaded->stray_errors[0],
              AllOf(StartsWith(dir_ + "/bad name.json: "), HasSubstr("not a service name")));
  EXPECT_THAT(loaded->Errors(), ElementsAre(loaded->stray_errors[0]));
}

TEST(DiffServicesTest, AddedRemovedChangedUnchangedAndBrokenFilesInNone) {
  ServiceDirectory now = Resolved({{"kept", After("")},
                                   {"edited", After(R"("kept")")},
                                   {"new", After(R"("edited")")},
                                   {"broken", "{"}});
  std::map<std::string, std::string> in_force = {
      {"kept", now.services.at("kept").digest},
      {"edited", "an older digest"},
      {"gone", "its digest"},
      {"broken", "what it declared before"},
  };
  ServiceDiff diff = DiffServices(in_force, now);
  EXPECT_THAT(diff.added, ElementsAre("new"));
  EXPECT_THAT(diff.removed, ElementsAre("gone"));
  EXPECT_THAT(diff.changed, ElementsAre("edited"));
  EXPECT_THAT(diff.unchanged, ElementsAre("kept"));
}

}  // namespace
}  // namespace proctor
