// ScopedEnv: sets or unsets one environment variable for the life of the object, and puts
// back what was there before (its value, or its absence), so a test leaves the process's
// environment as it found it. Like setenv itself, not safe while other threads read the
// environment: use it before starting threads, or where none read it.
#ifndef PROCTOR_TESTS_SCOPED_ENV_H_
#define PROCTOR_TESTS_SCOPED_ENV_H_

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace proctor::testing {

class ScopedEnv {
 public:
  // Sets `name` to `value`, or unsets it when `value` is nullopt.
  ScopedEnv(std::string name, std::optional<std::string> value) : name_(std::move(name)) {
    if (const char* previous = std::getenv(name_.c_str())) previous_ = previous;
    Put(value);
  }
  ~ScopedEnv() { Put(previous_); }

  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  void Put(const std::optional<std::string>& value) {
    if (value.has_value()) {
      setenv(name_.c_str(), value->c_str(), /*overwrite=*/1);
    } else {
      unsetenv(name_.c_str());
    }
  }

  const std::string name_;
  std::optional<std::string> previous_;
};

}  // namespace proctor::testing

#endif  // PROCTOR_TESTS_SCOPED_ENV_H_
