// A producer and a consumer sharing a Condition, across processes: the producer appends
// numbers to a file and notifies; the consumer waits (wait_for) until there is a line it has
// not read, prints it, and stops after the last. Run it with a proctord: it prints
// "consumed 1" .. "consumed 5".
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/examples/example_support.h"
#include "client/process.h"
#include "client/sync.h"

namespace {

constexpr int kItems = 5;

std::vector<std::string> Lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

void consumer(proctor::Condition cond, std::string path) {
  for (size_t seen = 0; seen < kItems; ++seen) {
    std::scoped_lock hold(cond);
    proctor::examples::Check(
        cond.wait_for([&] { return Lines(path).size() > seen; }).status(), "consumer");
    std::cout << "consumed " << Lines(path)[seen] << std::endl;
  }
}
PROCTOR_FUNCTION(consumer);

void producer(proctor::Condition cond, std::string path) {
  for (int i = 1; i <= kItems; ++i) {
    std::scoped_lock hold(cond);
    std::ofstream(path, std::ios::app) << i << "\n";
    proctor::examples::Check(cond.notify(), "producer");
  }
}
PROCTOR_FUNCTION(producer);

int main(int argc, char** argv) {
  proctor::MaybeRunChild(argc, argv);
  char dir[] = "/tmp/producer-consumer-XXXXXX";
  if (mkdtemp(dir) == nullptr) return 1;
  std::string path = absl::StrCat(dir, "/items");
  std::ofstream(path).close();
  proctor::Condition cond;
  proctor::examples::Check(cond.status(), "producer_consumer");
  proctor::Process c({.target = consumer, .args = {cond, path}});
  proctor::Process p({.target = producer, .args = {cond, path}});
  proctor::examples::Check(c.start(), "producer_consumer");
  proctor::examples::Check(p.start(), "producer_consumer");
  proctor::examples::Check(p.join(), "producer_consumer");
  proctor::examples::Check(c.join(), "producer_consumer");
  unlink(path.c_str());
  rmdir(dir);
}
