// Races that show only when the CPUs are busy: each test keeps them busy itself, with more
// spinning threads than there are CPUs, and runs alone (RUN_SERIAL), so that the load it
// makes slows no other test.
#include <signal.h>

#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/test_daemon.h"

namespace proctor::testing {
namespace {

// One spinning thread per CPU and one more, for as long as it lives.
class BusyCpus {
 public:
  BusyCpus() {
    for (unsigned t = 0; t <= std::thread::hardware_concurrency(); ++t) {
      spinners_.emplace_back([](std::stop_token stop) {
        while (!stop.stop_requested()) {
        }
      });
    }
  }

 private:
  std::vector<std::jthread> spinners_;
};

// The kernel spaces cgroup.events notifications 10 ms apart, so the one that says a worker's
// cgroup emptied can arrive after the cgroup was pooled and given to the next worker, while
// that worker is still on its way in. It is not taken as the new worker's: the cgroup stays
// its own, and is not pooled again for a third. The delay before the next Start is swept so
// that its launch meets the late notification.
TEST(CgroupPoolTest, ALateNotificationOfTheLastWorkerNeverHandsOnTheNextOnesCgroup) {
  TestDaemon daemon;
  if (daemon.Log().find("its own cgroup") == std::string::npos) {
    GTEST_SKIP() << "workers get no cgroups here";
  }
  BusyCpus busy;
  int shared = 0;
  std::string example;
  for (int i = 0; i < 60 && shared == 0; ++i) {
    v1::Process brief = StartOk(daemon.client(), {"/bin/true"});
    ASSERT_TRUE(daemon.client().Join(brief.id()).ok());
    ASSERT_TRUE(WaitFor([&] { return IsGone(brief.pid()); }));
    absl::SleepFor(absl::Microseconds(200 * i));  // 0 to 12 ms
    v1::Process first = StartOk(daemon.client(), {"/bin/sleep", "30"});
    v1::Process second = StartOk(daemon.client(), {"/bin/sleep", "30"});
    std::string a;
    std::string b;
    ASSERT_TRUE(WaitFor([&] {
      a = CgroupOfPid(first.pid());
      b = CgroupOfPid(second.pid());
      return !a.empty() && !b.empty();
    }));
    if (a == b) {
      ++shared;
      example = a;
    }
    for (const v1::Process& p : {first, second}) {
      v1::TerminateRequest terminate;
      terminate.set_id(p.id());
      terminate.set_signal(SIGKILL);
      ASSERT_TRUE(daemon.client().Terminate(terminate).ok());
      ASSERT_TRUE(daemon.client().Release(p.id()).ok());
    }
    ASSERT_TRUE(daemon.client().Release(brief.id()).ok());
  }
  EXPECT_EQ(shared, 0) << "two live workers shared the cgroup " << example;
}

}  // namespace
}  // namespace proctor::testing
