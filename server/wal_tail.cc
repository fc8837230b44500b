#include "server/wal_tail.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace proctor {
namespace {

constexpr size_t kHeaderSize = 32;
constexpr size_t kFrameHeaderSize = 24;
constexpr uint32_t kMagicLittleEndian = 0x377f0682;  // checksums over little-endian words
constexpr uint32_t kMagicBigEndian = 0x377f0683;

uint32_t BigEndian32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | u[3];
}

uint32_t LittleEndian32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{u[3]} << 24) | (uint32_t{u[2]} << 16) | (uint32_t{u[1]} << 8) | u[0];
}

// SQLite's WAL checksum, continued from s[0], s[1] over `size` bytes (a multiple of 8).
void Checksum(const char* data, size_t size, bool big_endian, uint32_t s[2]) {
  for (size_t i = 0; i + 8 <= size; i += 8) {
    uint32_t x0 = big_endian ? BigEndian32(data + i) : LittleEndian32(data + i);
    uint32_t x1 = big_endian ? BigEndian32(data + i + 4) : LittleEndian32(data + i + 4);
    s[0] += x0 + s[1];
    s[1] += x1 + s[0];
  }
}

}  // namespace

WalTail ReadWalTail(absl::string_view wal) {
  WalTail tail;
  if (wal.size() < kHeaderSize) return tail;  // SQLite starts such a log afresh
  uint32_t magic = BigEndian32(wal.data());
  uint32_t page_size = BigEndian32(wal.data() + 8);
  if ((magic != kMagicLittleEndian && magic != kMagicBigEndian) || page_size < 512 ||
      page_size > 65536 || (page_size & (page_size - 1)) != 0) {
    return tail;
  }
  const bool big_endian = magic == kMagicBigEndian;
  uint32_t sum[2] = {0, 0};
  Checksum(wal.data(), 24, big_endian, sum);
  if (sum[0] != BigEndian32(wal.data() + 24) || sum[1] != BigEndian32(wal.data() + 28)) {
    return tail;  // a header SQLite does not trust: it ignores the whole log
  }
  const absl::string_view salts = wal.substr(16, 8);
  const size_t frame_size = kFrameHeaderSize + page_size;
  tail.kept_bytes = kHeaderSize;
  size_t end = kHeaderSize;  // the end of the last frame of this generation, whole or not
  bool intact = true;        // every frame so far has chained correctly
  for (size_t offset = kHeaderSize; offset < wal.size(); offset += frame_size) {
    absl::string_view frame = wal.substr(offset, frame_size);
    // A frame of an older generation (or the start of one too short to tell) ends the log.
    absl::string_view frame_salts = frame.substr(std::min<size_t>(frame.size(), 8), 8);
    if (frame_salts != salts.substr(0, frame_salts.size())) break;
    end = offset + frame.size();
    ++tail.cut_frames;
    if (frame.size() < frame_size) {
      tail.torn = true;
      break;
    }
    if (intact) {
      Checksum(frame.data(), 8, big_endian, sum);
      Checksum(frame.data() + kFrameHeaderSize, page_size, big_endian, sum);
      intact = sum[0] == BigEndian32(frame.data() + 16) && sum[1] == BigEndian32(frame.data() + 20);
      if (!intact) tail.torn = true;
    }
    if (intact && BigEndian32(frame.data() + 4) != 0) {  // a commit: all up to here is kept
      tail.kept_bytes = end;
      tail.cut_frames = 0;
    }
  }
  tail.cut_bytes = end - tail.kept_bytes;
  if (tail.cut_bytes == 0) tail.torn = false;
  return tail;
}

absl::StatusOr<WalTail> ReadWalTailFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return WalTail{};
    return absl::InternalError(absl::StrCat("open ", path, ": ", std::strerror(err)));
  }
  std::string content;
  char buffer[65536];
  ssize_t got;
  while ((got = read(fd, buffer, sizeof(buffer))) != 0) {
    if (got < 0) {
      int err = errno;
      if (err == EINTR) continue;
      close(fd);
      return absl::InternalError(absl::StrCat("read ", path, ": ", std::strerror(err)));
    }
    content.append(buffer, static_cast<size_t>(got));
  }
  close(fd);
  return ReadWalTail(content);
}

}  // namespace proctor
