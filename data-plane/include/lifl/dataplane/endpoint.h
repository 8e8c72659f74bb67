// One instance's end of the router: it sends and receives 64-byte descriptors. Two kinds:
// a socket (the eBPF and userspace routers), and a DPDK ring in shared memory (the DPDK
// router, dpdk_router.h). Callers hold an Endpoint& and never see which.
#pragma once

#include <mutex>
#include <optional>

#include "lifl/common/descriptor.h"
#include "lifl/common/error.h"
#include "lifl/common/unique_fd.h"

namespace lifl::dataplane {

class Endpoint {
 public:
  explicit Endpoint(InstanceId self) : self_(self) {}
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;
  virtual ~Endpoint() = default;

  InstanceId self() const { return self_; }
  /// Sends one descriptor (src is set to this endpoint). Thread-safe.
  /// A descriptor to an instance that is not attached is dropped and counted by the router
  /// (RouteCounters::droppedMsgs of the sender), never an error: senders outlive peers.
  virtual Result<void> send(Descriptor d) = 0;
  /// Waits up to `timeoutMs` (-1: forever) for the next descriptor. Called by one thread.
  /// @return nullopt on timeout; an error when the router closed the endpoint or
  /// shutdownReceive() was called.
  virtual Result<std::optional<Descriptor>> receive(int timeoutMs) = 0;
  /// Wakes a receive(-1) blocked in another thread (it returns an error); sends still work.
  virtual void shutdownReceive() = 0;

 private:
  InstanceId self_;
};

/// The socket kind: the receive side reassembles exact 64-byte frames whatever the stream
/// coalesces or splits.
class SocketEndpoint final : public Endpoint {
 public:
  SocketEndpoint(UniqueFd fd, InstanceId self);
  int fd() const { return fd_.get(); }
  Result<void> send(Descriptor d) override;
  Result<std::optional<Descriptor>> receive(int timeoutMs) override;
  void shutdownReceive() override;

 private:
  UniqueFd fd_;
  std::mutex sendMutex_;
  alignas(64) std::byte buffer_[LIFL_DESCRIPTOR_SIZE * 64];
  size_t begin_ = 0, end_ = 0;
};

}  // namespace lifl::dataplane
