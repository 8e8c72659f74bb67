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
  for (size_t c = 0; c < pools_.size(); ++c) releaseLocked(c);
  chains_ = std::move(chains);
  pools_.assign(chains_.size(), {});
  for (size_t c = 0; c < chains_.size(); ++c) LIFL_TRYV(deployLocked(c));
  return success();
}

void ChainManager::releaseLocked(size_t c) {
  for (auto& pool : pools_[c])
    for (const auto& i : pool) supervisor_.release(i.id);
  pools_[c].clear();
}

nlohmann::json ChainManager::paramsLocked(size_t c, size_t hop) const {
  const auto& chain = chains_[c];
  const bool last = hop + 1 == chain.functions.size();
  nlohmann::json params = chain.params;
  params["chain"] = chain.name;
  params["position"] = hop;
  params["next"] = last || chain.routed(hop + 1) ? kAgentInstance : pools_[c][hop + 1][0].id;
  params["last"] = last;  // next is the agent either way: the last hop replies, others route
  return params;
}

Result<void> ChainManager::deployLocked(size_t c) {
  const auto& chain = chains_[c];
  releaseLocked(c);
  const auto now = std::chrono::steady_clock::now();
  for (size_t i = 0; i < chain.functions.size(); ++i) {
    LIFL_TRY(id, supervisor_.reserve());
    pools_[c].push_back(Pool{Instance{id, now}});
  }
  // Assign back to front is not needed: the router queues, and hops only receive events
  // after the gateway sends the first one, which is after every assignment.
  for (size_t i = 0; i < chain.functions.size(); ++i)
    LIFL_TRYV(supervisor_.assign(pools_[c][i][0].id, chain.functions[i], paramsLocked(c, i)));
  LIFL_INFO("chain " << chain.name << " deployed on " << chain.functions.size() << " instances");
  return success();
}

Result<InstanceId> ChainManager::addLocked(size_t c, size_t hop) {
  const auto& chain = chains_[c];
  LIFL_TRY(id, supervisor_.reserve());
  if (auto assigned = supervisor_.assign(id, chain.functions[hop], paramsLocked(c, hop));
      !assigned) {
    supervisor_.release(id);
    return assigned.error();
  }
  pools_[c][hop].push_back({id, std::chrono::steady_clock::now()});
  LIFL_INFO("chain " << chain.name << ": " << chain.functions[hop] << " scaled up to "
                     << pools_[c][hop].size() << " instances");
  return id;
}

void ChainManager::trimLocked(size_t c, size_t hop, InstanceId picked) {
  const auto now = std::chrono::steady_clock::now();
  auto& pool = pools_[c][hop];
  for (auto it = pool.begin() + 1; it != pool.end();) {
    const bool holding = hop == 0 && !chains_[c].entryHolds ? queue_(it->id) > 0 : it->inFlight > 0;
    if (it->id != picked && !holding &&
        std::chrono::duration<double>(now - it->lastPicked).count() >= idleSeconds_) {
      supervisor_.release(it->id);
      it = pool.erase(it);
      LIFL_INFO("chain " << chains_[c].name << ": " << chains_[c].functions[hop]
                         << " scaled down to " << pool.size() << " instances");
    } else {
      ++it;
    }
  }
}

Result<InstanceId> ChainManager::pickLocked(size_t c) {
  if (chains_[c].entryHolds) return routeLocked(c, 0);
  auto& pool = pools_[c][0];
  if (!queue_) return pool[0].id;
  size_t best = 0;
  uint64_t shortest = queue_(pool[0].id);
  for (size_t i = 1; i < pool.size(); ++i)
    if (const uint64_t q = queue_(pool[i].id); q < shortest) {
      shortest = q;
      best = i;
    }
  InstanceId picked = pool[best].id;
  if (scaleUpDepth_ > 0 && shortest >= scaleUpDepth_ && pool.size() < chains_[c].maxOf(0)) {
    LIFL_TRY(id, addLocked(c, 0));
    picked = id;
  }
  for (auto& i : pool)
    if (i.id == picked) i.lastPicked = std::chrono::steady_clock::now();
  trimLocked(c, 0, picked);
  return picked;
}

Result<InstanceId> ChainManager::routeLocked(size_t c, size_t hop) {
  auto& pool = pools_[c][hop];
  size_t best = 0;
  for (size_t i = 1; i < pool.size(); ++i)
    if (pool[i].inFlight < pool[best].inFlight) best = i;
  InstanceId picked = pool[best].id;
  if (scaleUpDepth_ > 0 && pool[best].inFlight >= scaleUpDepth_ &&
      pool.size() < chains_[c].maxOf(hop)) {
    LIFL_TRY(id, addLocked(c, hop));
    picked = id;
  }
  for (auto& i : pool)
    if (i.id == picked) {
      i.lastPicked = std::chrono::steady_clock::now();
      i.inFlight++;
    }
  trimLocked(c, hop, picked);
  return picked;
}

void ChainManager::route(const Descriptor& d) {
  InstanceId to = 0;
  bool answer = false;
  {
    std::lock_guard lock(mutex_);
    size_t chain = pools_.size(), hop = 0;
    for (size_t c = 0; c < pools_.size() && chain == pools_.size(); ++c)
      for (size_t h = 0; h < pools_[c].size(); ++h)
        for (const auto& i : pools_[c][h])
          if (i.id == d.src) chain = c, hop = h + 1;
    // The last hop's event is the chain's answer (a prefill node's chain ends with the
    // prefill stage, whose hand-off goes back to the decode node that asked for it).
    answer = chain < pools_.size() && hop == pools_[chain].size();
    if (!answer &&
        (chain == pools_.size() || hop >= pools_[chain].size() || !chains_[chain].routed(hop)))
      LIFL_WARN("an event from instance " << d.src << " that no chain routes: dropped");
    const bool routable = !answer && chain < pools_.size() && hop < pools_[chain].size() &&
                          chains_[chain].routed(hop) && pending_.count(d.correlation);
    if (routable) {
      if (auto picked = routeLocked(chain, hop)) {
        to = picked.value();
        routedTo_[d.correlation] = to;
      } else {
        LIFL_WARN("chain " << chains_[chain].name << ": " << picked.error().detail);
      }
    }
  }
  if (answer) return onReply(d);
  auto event = store_.resolve(d);
  if (!to || !event) {  // no chain waits for it (the caller has gone), or it cannot go on
    if (event) store_.release(event.value().handle());
    return;
  }
  event.value().setOwner(to);
  Descriptor next = d;
  next.dst = to;
  if (auto sent = endpoint_.send(next); !sent) {
    LIFL_WARN("routing a chain event to " << to << ": " << sent.error().detail);
    store_.release(event.value().handle());
  }
}

bool ChainManager::owns(InstanceId id) const {
  std::lock_guard lock(mutex_);
  for (const auto& chain : pools_)
    for (const auto& pool : chain)
      for (const auto& i : pool)
        if (i.id == id) return true;
  return false;
}

void ChainManager::onInstanceDeath(InstanceId id) {
  std::lock_guard lock(mutex_);
  for (size_t c = 0; c < pools_.size(); ++c)
    for (auto& pool : pools_[c])
      for (size_t i = 0; i < pool.size(); ++i) {
        if (pool[i].id != id) continue;
        for (const auto& o : store_.ownedBy(id)) store_.release(o.handle());
        if (i > 0) {  // an added instance: the others go on without it
          pool.erase(pool.begin() + static_cast<long>(i));
          LIFL_WARN("chain instance " << id << " died; the chain goes on without it");
          return;
        }
        if (auto r = deployLocked(c); !r) LIFL_ERROR("re-deploying chain: " << r.error().detail);
        return;
      }
}

Result<InstanceId> ChainManager::entry(const std::string& name) const {
  std::lock_guard lock(mutex_);
  for (size_t c = 0; c < chains_.size(); ++c)
    if (chains_[c].name == name && !pools_[c].empty()) return pools_[c][0][0].id;
  return notFound("unknown_function", "no function chain named " + name);
}

size_t ChainManager::instances(const std::string& name, size_t hop) const {
  std::lock_guard lock(mutex_);
  for (size_t c = 0; c < chains_.size(); ++c)
    if (chains_[c].name == name && hop < pools_[c].size()) return pools_[c][hop].size();
  return 0;
}

Result<uint64_t> ChainManager::invoke(const std::string& name, ObjectRef event,
                                      std::shared_ptr<ChainCall> call) {
  uint64_t correlation = 0;
  InstanceId first = 0;
  {
    std::lock_guard lock(mutex_);
    size_t c = 0;
    while (c < chains_.size() && !(chains_[c].name == name && !pools_[c].empty())) ++c;
    if (c == chains_.size()) return notFound("unknown_function", "no function chain named " + name);
    LIFL_TRY(picked, pickLocked(c));
    first = picked;
    correlation = nextCorrelation_++;
    if (chains_[c].entryHolds) routedTo_[correlation] = first;  // in flight until it answers
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

void ChainManager::settleLocked(uint64_t correlation) {
  auto routed = routedTo_.find(correlation);
  if (routed == routedTo_.end()) return;
  for (auto& chain : pools_)
    for (auto& pool : chain)
      for (auto& i : pool)
        if (i.id == routed->second && i.inFlight > 0) i.inFlight--;
  routedTo_.erase(routed);
}

void ChainManager::forget(uint64_t correlation) {
  std::lock_guard lock(mutex_);
  pending_.erase(correlation);
  settleLocked(correlation);
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
    settleLocked(d.correlation);
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
