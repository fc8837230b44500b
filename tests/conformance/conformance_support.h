// What the conformance tests share: the fixture (a proctord of the test's own, used by the
// library) and small file helpers standing in for multiprocessing's pipes and queues.
#ifndef PROCTOR_TESTS_CONFORMANCE_CONFORMANCE_SUPPORT_H_
#define PROCTOR_TESTS_CONFORMANCE_CONFORMANCE_SUPPORT_H_

#include <string>
#include <vector>

#include "client/process.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::conformance {

// Appends `line` and a newline to the file at `path` in one write (O_APPEND), so whole lines
// from different processes never mix. False when the file cannot be written.
bool AppendLine(const std::string& path, const std::string& line);
// The lines of the file at `path`, without their newlines; none when it does not exist.
std::vector<std::string> ReadLines(const std::string& path);

class ConformanceTest : public ::testing::Test {
 protected:
  void SetUp() override;

  // The captured stdout of a started child, as far as it has been written.
  static std::string Out(const Process& p);
  // Starts `p`, asserting it started.
  static void StartOk(Process& p);

  testing::TestDaemon daemon_;
  Client& client_ = daemon_.client();
};

}  // namespace proctor::conformance

#endif  // PROCTOR_TESTS_CONFORMANCE_CONFORMANCE_SUPPORT_H_
