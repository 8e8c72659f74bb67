#include "node_commands.h"

#include <memory>

#include "lifl/common/http_client.h"
#include "lifl/common/log.h"

namespace lifl::control {

NodeCommands::NodeCommands(std::string nodeName, std::string url, double timeoutSeconds,
                           std::string credential, TlsOptions tls)
    : node_(std::move(nodeName)),
      url_(std::move(url)),
      timeoutSeconds_(timeoutSeconds),
      credential_(std::move(credential)),
      tls_(std::move(tls)),
      thread_([this] { run(); }) {}

NodeCommands::~NodeCommands() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  deliveredChanged_.notify_all();
  thread_.join();
}

uint64_t NodeCommands::send(std::string method, std::string target, std::string body) {
  uint64_t seq = 0;
  {
    std::lock_guard lock(mutex_);
    queue_.push_back({std::move(method), std::move(target), std::move(body)});
    seq = ++queued_;
  }
  wake_.notify_all();
  return seq;
}

bool NodeCommands::waitDelivered(uint64_t seq, double timeoutSeconds) {
  std::unique_lock lock(mutex_);
  return deliveredChanged_.wait_for(lock, std::chrono::duration<double>(timeoutSeconds), [&] {
    return delivered_ >= seq || stopping_;
  }) && delivered_ >= seq;
}

void NodeCommands::run() {
  std::unique_ptr<HttpClient> client;
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (queue_.empty()) {
      wake_.wait(lock);
      continue;
    }
    Command c = queue_.front();
    lock.unlock();
    Result<HttpResponse> answer = unavailable("connect_failed", "not connected");
    if (!client) {
      auto connected = HttpClient::connect(url_, timeoutSeconds_, tls_);
      if (connected) {
        client = std::move(connected).value();
        client->setBearer(credential_);
      } else
        answer = connected.error();
    }
    if (client)
      answer = client->request(c.method, c.target, {{"Content-Type", "application/json"}},
                               c.body.data(), c.body.size());
    lock.lock();
    const bool sent = answer && answer.value().status < 500;
    if (answer && answer.value().status >= 400)
      LIFL_WARN("node " << node_ << ": " << c.method << " " << c.target << ": "
                        << errorOf(answer.value()).toString());
    if (sent) {
      queue_.pop_front();
      ++delivered_;
      deliveredChanged_.notify_all();
      continue;
    }
    if (!answer) client.reset();
    LIFL_DEBUG(
        "node " << node_ << ": " << c.method << " " << c.target << " failed, retrying: "
                << (answer ? errorOf(answer.value()).toString() : answer.error().toString()));
    wake_.wait_for(lock, std::chrono::milliseconds(200));  // until the node answers or is drained
  }
}

}  // namespace lifl::control
