// The seed's second way to start processes (开进程的方法二), line for line: four processes
// from a subclass of Process that overrides run(); the main program prints 主线程 ("main
// thread") right after starting them, and returns while they still run: the library then
// waits for them, as Python does.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "client/examples/example_support.h"
#include "client/process.h"

namespace {

using proctor::examples::RandRange;

void Check(const absl::Status& status) { proctor::examples::Check(status, "piao_subclass"); }

}  // namespace

// Rebuilt in the child as Piao(name): ProcessClass<std::string> records the argument.
class Piao : public proctor::ProcessClass<std::string> {
 public:
  explicit Piao(std::string name) : ProcessClass(name) { set_name(name); }

  void run() override {
    std::cout << name() << " piaoing" << std::endl;
    std::this_thread::sleep_for(std::chrono::seconds(RandRange(1, 5)));
    std::cout << name() << " piao end" << std::endl;
  }
};
PROCTOR_PROCESS_CLASS(Piao);

int main(int argc, char** argv) {
  proctor::MaybeRunChild(argc, argv);  // if __name__ == '__main__': (a child runs Piao here)

  Piao p1("A");
  Piao p2("B");
  Piao p3("C");
  Piao p4("D");

  Check(p1.start());  // start() runs run() in the child
  Check(p2.start());
  Check(p3.start());
  Check(p4.start());
  std::cout << "主线程" << std::endl;
}
