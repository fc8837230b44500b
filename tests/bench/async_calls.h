// Async calls parked in proctord by a benchmark (waiters, Joins), and their end.
#ifndef PROCTOR_TESTS_BENCH_ASYNC_CALLS_H_
#define PROCTOR_TESTS_BENCH_ASYNC_CALLS_H_

#include <memory>
#include <vector>

#include "grpcpp/grpcpp.h"

namespace proctor::bench {

// Cancels every call in `calls` (each a struct with a grpc::ClientContext `context` whose
// Finish was given `cq`), waits until `cq` has given each back, then shuts `cq` down and
// drains it: the calls may then be destroyed.
template <typename Call>
void CancelAndDrain(std::vector<std::unique_ptr<Call>>& calls, grpc::CompletionQueue& cq) {
  for (auto& call : calls) call->context.TryCancel();
  void* tag = nullptr;
  bool ok = false;
  for (size_t done = 0; done < calls.size(); ++done) {
    if (!cq.Next(&tag, &ok)) break;
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

}  // namespace proctor::bench

#endif  // PROCTOR_TESTS_BENCH_ASYNC_CALLS_H_
