#include "lifl/dataplane/chain_manager.h"

#include "lifl/common/log.h"

namespace lifl::dataplane {

ChainManager::ChainManager(ObjectStore& store, Endpoint& endpoint, Supervisor& supervisor)
    : store_(store), endpoint_(endpoint), supervisor_(supervisor) {}

void ChainManager::setAutoscale(QueueProbe probe, uint32_t scaleUpDepth, double idleSeconds) {
  std::lock_guard lock(mutex_);
  queue_ = std::move(probe);
  scaleUpDepth_ = scaleUpDepth;
  idleSeconds_ = idleSeconds;
}

Result<void> ChainManager::deploy(std::vector<ChainSpec> chains) {
  std::lock_guard lock(mutex_);
  for (size_t c = 0; c < added_.size(); ++c) releaseAddedLocked(c);
  chains_ = std::move(chains);
  hops_.assign(chains_.size(), {});
  added_.assign(chains_.size(), {});
  for (size_t c = 0; c < chains_.size(); ++c) LIFL_TRYV(deployLocked(c));
  return success();
}

Result<void> ChainManager::deployLocked(size_t c) {
  const auto& chain = chains_[c];
  auto& hops = hops_[c];
  for (InstanceId id : hops) supervisor_.release(id);
  releaseAddedLocked(c);
  hops.assign(chain.functions.size(), 0);
  for (size_t i = 0; i < hops.size(); ++i) {
    LIFL_TRY(id, supervisor_.reserve());
    hops[i] = id;
  }
  // Assign back to front is not needed: the router queues, and hops only receive events
  // after the gateway sends the first one, which is after every assignment.
  for (size_t i = 0; i < hops.size(); ++i) {
    const InstanceId next = i + 1 < hops.size() ? hops[i + 1] : kAgentInstance;
    nlohmann::json params = chain.params;
    params["chain"] = chain.name;
    params["position"] = i;
    params["next"] = next;
    LIFL_TRYV(supervisor_.assign(hops[i], chain.functions[i], params));
  }
  LIFL_INFO("chain " << chain.name << " deployed on " << hops.size() << " instances");
  return success();
}

bool ChainManager::owns(InstanceId id) const {
  std::lock_guard lock(mutex_);
  for (const auto& hops : hops_)
    for (InstanceId h : hops)
      if (h == id) return true;
  for (const auto& added : added_)
    for (const auto& a : added)
      if (a.id == id) return true;
  return false;
}

void ChainManager::onInstanceDeath(InstanceId id) {
  std::lock_guard lock(mutex_);
  for (auto& added : added_)  // an added first-hop instance: the others go on without it
    for (auto it = added.begin(); it != added.end(); ++it)
      if (it->id == id) {
        for (const auto& o : store_.ownedBy(id)) store_.release(o.handle());
        added.erase(it);
        LIFL_WARN("chain instance " << id << " died; the chain goes on without it");
        return;
      }
  for (size_t c = 0; c < hops_.size(); ++c) {
    for (InstanceId h : hops_[c]) {
      if (h != id) continue;
      for (const auto& o : store_.ownedBy(id)) store_.release(o.handle());
      if (auto r = deployLocked(c); !r) LIFL_ERROR("re-deploying chain: " << r.error().detail);
      return;
    }
  }
}

Result<InstanceId> ChainManager::entry(const std::string& name) const {
  std::lock_guard lock(mutex_);
  for (size_t c = 0; c < chains_.size(); ++c)
    if (chains_[c].name == name && !hops_[c].empty()) return hops_[c][0];
  return notFound("unknown_function", "no function chain named " + name);
}

size_t ChainManager::entryInstances(const std::string& name) const {
  std::lock_guard lock(mutex_);
  for (size_t c = 0; c < chains_.size(); ++c)
    if (chains_[c].name == name && !hops_[c].empty()) return 1 + added_[c].size();
  return 0;
}

void ChainManager::releaseAddedLocked(size_t c) {
  if (c >= added_.size()) return;
  for (const auto& a : added_[c]) supervisor_.release(a.id);
  added_[c].clear();
}

Result<InstanceId> ChainManager::pickLocked(size_t c) {
  const auto& chain = chains_[c];
  auto& added = added_[c];
  if (!queue_) return hops_[c][0];
  const auto now = std::chrono::steady_clock::now();
  InstanceId best = hops_[c][0];
  uint64_t shortest = queue_(best);
  for (const auto& a : added)
    if (const uint64_t q = queue_(a.id); q < shortest) {
      shortest = q;
      best = a.id;
    }
  if (scaleUpDepth_ > 0 && shortest >= scaleUpDepth_ && 1 + added.size() < chain.maxInstances) {
    LIFL_TRY(id, supervisor_.reserve());
    nlohmann::json params = chain.params;
    params["chain"] = chain.name;
    params["position"] = 0;
    params["next"] = hops_[c].size() > 1 ? hops_[c][1] : kAgentInstance;
    if (auto assigned = supervisor_.assign(id, chain.functions[0], params); !assigned) {
      supervisor_.release(id);
      return assigned.error();
    }
    added.push_back({id, now});
    best = id;
    LIFL_INFO("chain " << chain.name << ": " << chain.functions[0] << " scaled up to "
                       << 1 + added.size() << " instances (shortest queue " << shortest << ")");
  }
  for (auto it = added.begin(); it != added.end();) {
    if (it->id == best) {
      it->lastPicked = now;
      ++it;
    } else if (std::chrono::duration<double>(now - it->lastPicked).count() >= idleSeconds_ &&
               queue_(it->id) == 0) {
      supervisor_.release(it->id);
      LIFL_INFO("chain " << chain.name << ": " << chain.functions[0] << " scaled down to "
                         << added.size() << " instances");
      it = added.erase(it);
    } else {
      ++it;
    }
  }
  return best;
}

Result<uint64_t> ChainManager::invoke(const std::string& name, ObjectRef event,
                                      std::shared_ptr<ChainCall> call) {
  uint64_t correlation = 0;
  InstanceId first = 0;
  {
    std::lock_guard lock(mutex_);
    size_t c = 0;
    while (c < chains_.size() && !(chains_[c].name == name && !hops_[c].empty())) ++c;
    if (c == chains_.size()) return notFound("unknown_function", "no function chain named " + name);
    LIFL_TRY(picked, pickLocked(c));
    first = picked;
    correlation = nextCorrelation_++;
    pending_[correlation] = std::move(call);
  }
  event.setOwner(first);
  Descriptor d{};
  d.dst = first;
  d.kind = DescriptorKind::Event;
  d.correlation = correlation;
  event.describe(d);
  if (auto sent = endpoint_.send(d); !sent) {
    forget(correlation);
    store_.release(event.handle());
    return sent.error();
  }
  return correlation;
}

void ChainManager::forget(uint64_t correlation) {
  std::lock_guard lock(mutex_);
  pending_.erase(correlation);
}

void ChainManager::onStream(const Descriptor& d) {
  std::shared_ptr<ChainCall> call;
  {
    std::lock_guard lock(mutex_);
    auto it = pending_.find(d.correlation);
    if (it == pending_.end()) {  // the caller has gone
      store_.release(ObjectHandle{d.offset, d.length, d.generation});
      return;
    }
    call = it->second;
  }
  std::function<void()> wake;
  {
    std::lock_guard lock(call->mutex);
    call->pieces.push_back(d);
    wake = call->wake;
  }
  if (wake) wake();
}

void ChainManager::onReply(const Descriptor& d) {
  std::shared_ptr<ChainCall> call;
  {
    std::lock_guard lock(mutex_);
    auto it = pending_.find(d.correlation);
    if (it == pending_.end()) {  // the caller timed out: nobody will read the reply
      store_.release(ObjectHandle{d.offset, d.length, d.generation});
      return;
    }
    call = std::move(it->second);
    pending_.erase(it);
  }
  std::function<void()> wake;
  {
    std::lock_guard lock(call->mutex);
    call->done = true;
    call->reply = d;
    wake = call->wake;
  }
  if (wake) wake();
}

}  // namespace lifl::dataplane
