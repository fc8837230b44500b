// The `proctor` command line (client/cli/cli.h) on arbitrary arguments, checked with CheckCli:
// everything RunCli does up to connecting. The input is the arguments after the program name,
// each ended by a NUL byte.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "client/cli/cli.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view line(reinterpret_cast<const char*>(data), size);
  // No argument from argv holds a NUL; an unended last argument counts too.
  std::vector<std::string> args = absl::StrSplit(line, '\0');
  if (!args.empty() && args.back().empty()) args.pop_back();
  std::ostringstream out, err;
  proctor::CheckCli(args, out, err);
  return 0;
}
