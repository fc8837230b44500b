#include "tests/conformance/conformance_support.h"

#include <fcntl.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace proctor::conformance {

bool AppendLine(const std::string& path, const std::string& line) {
  int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  std::string whole = absl::StrCat(line, "\n");
  bool written = write(fd, whole.data(), whole.size()) == static_cast<ssize_t>(whole.size());
  close(fd);
  return written;
}

std::vector<std::string> ReadLines(const std::string& path) {
  std::string text = testing::ReadFile(path);
  if (text.empty()) return {};
  if (text.back() == '\n') text.pop_back();
  return absl::StrSplit(text, '\n');
}

void ConformanceTest::SetUp() {
  absl::Status used =
      UseDaemon({.address = daemon_.address(), .authkey_file = daemon_.authkey_path()});
  ASSERT_TRUE(used.ok()) << used;
}

std::string ConformanceTest::Out(const Process& p) {
  return testing::ReadFile(p.record().stdout_path());
}

void ConformanceTest::StartOk(Process& p) {
  absl::Status started = p.start();
  ASSERT_TRUE(started.ok()) << started;
}

}  // namespace proctor::conformance
