// What the two ports of the seed's examples share: Python's random.randrange, and what an
// example does with a failed call (say so and stop).
#ifndef PROCTOR_CLIENT_EXAMPLES_EXAMPLE_SUPPORT_H_
#define PROCTOR_CLIENT_EXAMPLES_EXAMPLE_SUPPORT_H_

#include <cstdlib>
#include <iostream>
#include <random>

#include "absl/status/status.h"

namespace proctor::examples {

// random.randrange(start, stop): start <= n < stop.
inline int RandRange(int start, int stop) {
  std::random_device seed;
  std::mt19937 engine(seed());
  return std::uniform_int_distribution<int>(start, stop - 1)(engine);
}

inline void Check(const absl::Status& status, const char* program) {
  if (status.ok()) return;
  std::cerr << program << ": " << status << std::endl;
  std::exit(1);
}

}  // namespace proctor::examples

#endif  // PROCTOR_CLIENT_EXAMPLES_EXAMPLE_SUPPORT_H_
