// The multiprocessing documentation's lock example, line for line:
//
//   def f(l, i):
//       l.acquire()
//       try:
//           print('hello world', i)
//       finally:
//           l.release()
//
//   if __name__ == '__main__':
//       lock = Lock()
//       for num in range(10):
//           Process(target=f, args=(lock, num)).start()
#include <iostream>
#include <mutex>

#include "client/examples/example_support.h"
#include "client/process.h"
#include "client/sync.h"

void f(proctor::Lock l, int i) {
  std::scoped_lock hold(l);  // acquire(); try: ... finally: release()
  std::cout << "hello world " << i << std::endl;
}
PROCTOR_FUNCTION(f);

int main(int argc, char** argv) {
  proctor::MaybeRunChild(argc, argv);  // if __name__ == '__main__':
  proctor::Lock lock;
  proctor::examples::Check(lock.status(), "lock_hello");
  for (int num = 0; num < 10; ++num) {
    proctor::examples::Check(proctor::Process({.target = f, .args = {lock, num}}).start(),
                             "lock_hello");
  }
}  // at exit the library joins the ten, as Python does
