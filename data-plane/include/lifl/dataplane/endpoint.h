// One instance's end of the router: framed descriptor send/receive over its socket. The
// receive side reassembles exact 64-byte frames whatever the stream coalesces or splits.
#pragma once

#include <mutex>
#include <optional>

#include "lifl/common/descriptor.h"
#include "lifl/common/error.h"
#include "lifl/common/unique_fd.h"

namespace lifl::dataplane {

class Endpoint {
 public:
  Endpoint(UniqueFd fd, InstanceId self);
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  InstanceId self() const { return self_; }
  int fd() const { return fd_.get(); }

  /// Sends one descriptor (src is set to this endpoint). Thread-safe.
  /// A descriptor to an instance that is not attached is dropped and counted by the router
  /// (RouteCounters::droppedMsgs of the sender), never an error: senders outlive peers.
  Result<void> send(Descriptor d);
  /// Waits up to `timeoutMs` (-1: forever) for the next descriptor.
  /// @return nullopt on timeout; an error when the router closed the socket or shutdown()
  /// was called.
  Result<std::optional<Descriptor>> receive(int timeoutMs);
  /// Wakes a receive(-1) blocked in another thread (it returns an error); sends still work.
  void shutdownReceive();

 private:
  UniqueFd fd_;
  InstanceId self_;
  std::mutex sendMutex_;
  alignas(64) std::byte buffer_[LIFL_DESCRIPTOR_SIZE * 64];
  size_t begin_ = 0, end_ = 0;
};

}  // namespace lifl::dataplane
