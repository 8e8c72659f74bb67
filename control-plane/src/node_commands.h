// The controller's requests to one node agent, sent in order by one thread per node. A
// request that fails is retried (the agent may be busy or restarting) until it succeeds or
// the node is drained; agents apply them idempotently, so a repeat is harmless.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "lifl/common/http_client.h"

namespace lifl::control {

class NodeCommands {
 public:
  /// @param credential the cluster credential the commands carry ("": none)
  NodeCommands(std::string nodeName, std::string url, double timeoutSeconds,
               std::string credential = "", TlsOptions tls = {});
  ~NodeCommands();
  NodeCommands(const NodeCommands&) = delete;
  NodeCommands& operator=(const NodeCommands&) = delete;

  /// Queues a request. @return its sequence number, for waitDelivered()
  uint64_t send(std::string method, std::string target, std::string body);
  /// Waits (bounded) until the request `seq` and those before it were answered.
  bool waitDelivered(uint64_t seq, double timeoutSeconds);
  /// The sequence number of the last request queued.
  uint64_t lastQueued() {
    std::lock_guard lock(mutex_);
    return queued_;
  }

 private:
  struct Command {
    std::string method, target, body;
  };
  void run();

  std::string node_, url_;
  double timeoutSeconds_;
  std::string credential_;
  TlsOptions tls_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Command> queue_;
  uint64_t queued_ = 0, delivered_ = 0;
  std::condition_variable deliveredChanged_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace lifl::control
