// The controller's requests to one node agent, sent in order by one thread per node. A
// request that fails is retried (the agent may be busy or restarting) until it succeeds or
// the node is drained; agents apply them idempotently, so a repeat is harmless.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

namespace lifl::control {

class NodeCommands {
 public:
  NodeCommands(std::string nodeName, std::string url, double timeoutSeconds);
  ~NodeCommands();
  NodeCommands(const NodeCommands&) = delete;
  NodeCommands& operator=(const NodeCommands&) = delete;

  void send(std::string method, std::string target, std::string body);

 private:
  struct Command {
    std::string method, target, body;
  };
  void run();

  std::string node_, url_;
  double timeoutSeconds_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Command> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace lifl::control
