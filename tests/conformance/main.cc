// The conformance tests' program. It is also what their function and class targets re-execute
// (MaybeRunChild first), and the helper program test_error_on_stdio_flush_1 runs.
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "client/process.h"
#include "gtest/gtest.h"

namespace proctor::conformance {
int RunBrokenStdioHelper(const std::string& stream);
}  // namespace proctor::conformance

int main(int argc, char** argv) {
  proctor::MaybeRunChild(argc, argv);
  if (argc >= 2 && absl::StartsWith(argv[1], "--helper=broken-")) {
    return proctor::conformance::RunBrokenStdioHelper(
        std::string(absl::StripPrefix(argv[1], "--helper=broken-")));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
