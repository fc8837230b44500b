// HeapOptional<T>: an optional value kept on the heap, for the parts of a record that most
// records never have (a restart policy, what notify said). Empty, it costs one pointer where
// std::optional<T> would cost sizeof(T); set, it costs an allocation. Copies copy the value.
//
// The subset of std::optional's interface the records use: has_value, *, ->, emplace, reset,
// and assignment from a T.
#ifndef PROCTOR_SERVER_HEAP_OPTIONAL_H_
#define PROCTOR_SERVER_HEAP_OPTIONAL_H_

#include <memory>
#include <utility>

namespace proctor {

template <typename T>
class HeapOptional {
 public:
  HeapOptional() = default;
  HeapOptional(const HeapOptional& other) : value_(Copy(other)) {}
  HeapOptional(HeapOptional&&) noexcept = default;
  HeapOptional& operator=(const HeapOptional& other) {
    if (this != &other) value_ = Copy(other);
    return *this;
  }
  HeapOptional& operator=(HeapOptional&&) noexcept = default;
  HeapOptional& operator=(T value) {
    value_ = std::make_unique<T>(std::move(value));
    return *this;
  }

  bool has_value() const { return value_ != nullptr; }
  // REQUIRES: has_value().
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }
  T* operator->() { return value_.get(); }
  const T* operator->() const { return value_.get(); }

  T& emplace() {
    value_ = std::make_unique<T>();
    return *value_;
  }
  void reset() { value_.reset(); }

 private:
  static std::unique_ptr<T> Copy(const HeapOptional& other) {
    return other.value_ != nullptr ? std::make_unique<T>(*other.value_) : nullptr;
  }

  std::unique_ptr<T> value_;
};

}  // namespace proctor

#endif  // PROCTOR_SERVER_HEAP_OPTIONAL_H_
