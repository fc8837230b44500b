// The seed's first way to start processes (开进程的方法一), line for line: four processes
// from a function target; the main program prints 主线程 ("main thread") right after starting
// them, and returns while they still run: the library then waits for them, as Python does.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "client/examples/example_support.h"
#include "client/process.h"

namespace {

using proctor::examples::RandRange;

void Check(const absl::Status& status) { proctor::examples::Check(status, "piao_function"); }

}  // namespace

void piao(std::string name) {
  std::cout << name << " piaoing" << std::endl;
  std::this_thread::sleep_for(std::chrono::seconds(RandRange(1, 5)));
  std::cout << name << " piao end" << std::endl;
}
PROCTOR_FUNCTION(piao);

int main(int argc, char** argv) {
  proctor::MaybeRunChild(argc, argv);  // if __name__ == '__main__': (a child runs piao here)

  proctor::Process p1({.target = piao, .args = {"A"}});
  proctor::Process p2({.target = piao, .args = {"B"}});
  proctor::Process p3({.target = piao, .args = {"C"}});
  proctor::Process p4({.target = piao, .args = {"D"}});

  Check(p1.start());
  Check(p2.start());
  Check(p3.start());
  Check(p4.start());
  std::cout << "主线程" << std::endl;
}
