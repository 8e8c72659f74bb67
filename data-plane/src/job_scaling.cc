// Scale-up within a round. Updates fill the round's leaf slots in order; two signals add a
// leaf from the warm pool while the round runs:
//  - the eBPF router's delivered counter minus the instance's processed counter is the
//    leaf's queue of unhandled descriptors: when it reaches `functions.scale_up_queue_depth`,
//    the leaf is behind its arrivals, so its slot is cut at what it already has (flushed) and
//    a new leaf takes the rest of the slot;
//  - a cluster node receiving more updates than its planned share grows a leaf when every
//    slot is full.
// Parents count clients, not children, so a new leaf needs no change above it.
#include "job_manager_internal.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/job_manager.h"
#include "lifl/dataplane/partial.h"

namespace lifl::dataplane {

using namespace detail;

void JobManager::setAutoscale(QueueDepthProbe probe, uint32_t queueDepth) {
  queueDepth_ = std::move(probe);
  scaleUpDepth_ = queueDepth;
}

Result<void> JobManager::growLeaf(Job& job, size_t at, uint32_t expected) {
  LIFL_CHECK(at >= 1 && at <= job.plan.leaves, "a new leaf goes next to another leaf");
  LIFL_TRY(id, supervisor_.reserve());
  const int parent = job.plan.nodes[at - 1].parent;  // beside its neighbour, under its parent
  for (auto& n : job.plan.nodes)                     // everything from `at` on moves one place
    if (n.parent >= static_cast<int>(at)) n.parent++;
  job.plan.nodes.insert(job.plan.nodes.begin() + static_cast<long>(at),
                        PlanNode{AggregatorRole::Leaf,
                                 parent >= static_cast<int>(at) ? parent + 1 : parent, expected});
  job.instances.insert(job.instances.begin() + static_cast<long>(at), id);
  job.routed.insert(job.routed.begin() + static_cast<long>(at), std::vector<uint64_t>{});
  job.plan.leaves++;
  if (auto assigned = supervisor_.assign(id, kAggregator, aggregatorParams(job, at, expected));
      !assigned) {  // undo: the tree is as before
    job.plan.nodes.erase(job.plan.nodes.begin() + static_cast<long>(at));
    for (auto& n : job.plan.nodes)
      if (n.parent > static_cast<int>(at)) n.parent--;
    job.instances.erase(job.instances.begin() + static_cast<long>(at));
    job.routed.erase(job.routed.begin() + static_cast<long>(at));
    job.plan.leaves--;
    supervisor_.release(id);
    return assigned.error();
  }
  job.scaleUps++;
  metrics_.scaleUp(job.spec.id);
  return success();
}

Result<void> JobManager::deployLeaf(Job& job, size_t leaf) {
  if (job.instances[leaf]) return success();
  LIFL_TRY(id, supervisor_.reserve());
  if (auto assigned = supervisor_.assign(
          id, kAggregator, aggregatorParams(job, leaf, job.plan.nodes[leaf].expected));
      !assigned) {
    supervisor_.release(id);
    return assigned.error();
  }
  job.instances[leaf] = id;
  return success();
}

void JobManager::onLeafDone(const Descriptor& d) {
  std::lock_guard lock(mutex_);
  auto it = bySlot_.find(d.job);
  if (it == bySlot_.end() || it->second->state != State::Active || d.round != it->second->round)
    return;  // a finished round's leaf: the tree's release took its process
  Job& job = *it->second;
  for (size_t leaf = 0; leaf < job.plan.leaves; ++leaf) {
    if (job.instances[leaf] != d.src || job.plan.nodes[leaf].role != AggregatorRole::Leaf ||
        rides(job, leaf))
      continue;
    job.instances[leaf] = 0;
    supervisor_.release(d.src, /*tellInstance=*/false);  // it owns nothing now
    return;
  }
}

JobManager::Room JobManager::tryStartReceiving(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto found = find(id);
  if (!found) return Room::Yes;  // admission said why it is refused
  Job& job = *found.value();
  // Bytes first, for every job: the store must keep, beyond this body, what every open
  // round's aggregators will allocate before they free updates. Without it they cannot fold
  // what was accepted and the round stalls with accepted updates in it.
  uint64_t reserve = maxUpdateBytes(job.spec);
  for (const auto& [_, other] : jobs_)
    if (other->state == State::Active) reserve += aggregationReserve(*other);
  if (store_.freeBytes() < reserve) return Room::StoreFull;
  if (!maxBufferedUpdates_ || !job.spec.eager || job.plan.leaves == 0 ||
      job.plan.nodes[0].role != AggregatorRole::Leaf) {
    job.receiving++;
    return Room::Yes;
  }
  // The round's objects in the store: updates, and the partials the aggregators hold (the
  // open leaf's accumulator, the parents', one being folded). Counting the partials too keeps
  // the store's use the same whether a round has 100 clients or 1000: a longer round meets
  // more often the moments when several leaves and a finishing middle hold partials at once.
  // Partials kept by the agent for another node are not the aggregators' and not counted.
  // What the aggregators allocate later is counted now, so that the bound holds at every
  // moment, not only when an upload is admitted: a parent's accumulator counts twice (its
  // next fold writes a new one before releasing it), and so do the accumulators that the
  // uploads being read will open in new slots.
  const uint32_t bound = std::max(maxBufferedUpdates_, job.plan.fanIn + 2) + kWorkingPartials;
  std::unordered_set<InstanceId> parents;
  for (size_t node = job.plan.leaves; node < job.plan.nodes.size(); ++node)
    parents.insert(job.instances[node]);
  if (job.cluster && job.cluster->top) parents.insert(job.cluster->top);
  uint32_t held = job.receiving + accumulatorsToOpen(job, job.receiving + 1);
  store_.forEach([&](const ObjectRef& o) {
    if (o.job() != job.slot || o.round() != job.round) return;
    if (o.kind() == ObjectKind::Update) held++;
    if (o.kind() == ObjectKind::Partial && o.owner() != kAgentInstance)
      held += parents.count(o.producer()) ? 2 : 1;
  });
  if (held >= bound) return Room::BufferFull;
  job.receiving++;
  return Room::Yes;
}

JobManager::RoundBlocks JobManager::roundBlocks(const JobSpec& spec) {
  const uint64_t clients = std::max<uint64_t>(spec.fanIn, spec.clientsPerRound);
  const uint64_t partial =
      std::max(maxUpdateBytes(spec),
               partialBytes(spec.modelElements(), spec.fanIn,
                            static_cast<uint32_t>(std::min<uint64_t>(clients, UINT32_MAX))));
  const uint64_t model = (1 + spec.strategy.stateVectors()) * spec.modelElements() * 4 + (64 << 10);
  // A block is rounded up to its size class (less than 19% more, shm_heap.h), plus its header.
  auto block = [](uint64_t bytes) { return bytes + bytes / 4 + 4096; };
  return {block(partial), block(model)};
}

uint64_t JobManager::aggregationReserve(const Job& job) const {
  if (job.plan.nodes.empty()) return 0;
  // What the aggregators allocate before they free anything; what they hold already is in
  // the store and not counted. Leaves: an eager job's slots open one after another (the
  // accumulators that the uploads being read and this one will open), a lazy job's leaves
  // all fold at the deadline. Parents: each one's next accumulator (an eager parent writes it
  // before it frees the last). Then one slot routed but not yet opened by its leaf, and the
  // round's model object with the server optimiser's state.
  const auto parents = static_cast<uint64_t>(job.plan.nodes.size() - job.plan.leaves);
  const uint64_t leaves = job.spec.eager && job.plan.leaves
                              ? accumulatorsToOpen(job, job.receiving + 1)
                              : uint64_t{job.plan.leaves};
  const RoundBlocks b = roundBlocks(job.spec);
  return (leaves + parents + 1) * b.partial + b.model;
}

Result<void> JobManager::fitsInStore(const JobSpec& spec) const {
  // At its fullest a round holds: eager, one leaf's fan-in of updates with the leaf's
  // accumulator and a parent's two (the last and the next), lazy, every update of the round
  // and an accumulator; and the models before and after it.
  const RoundBlocks b = roundBlocks(spec);
  const uint64_t objects =
      spec.eager ? uint64_t{spec.fanIn} + 3 : uint64_t{spec.clientsPerRound} + 1;
  const uint64_t need = objects * b.partial + 2 * b.model, capacity = store_.capacityBytes();
  if (need <= capacity) return success();
  auto mib = [](uint64_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20); };
  return unprocessable("store_too_small",
                       "a round of job " + spec.id + " needs " + mib(need) +
                           " MiB of the object store at once (" + std::to_string(objects) +
                           (spec.eager ? " updates and partials" : " updates") + " of up to " +
                           mib(b.partial) + " MiB and two models of " + mib(b.model) +
                           " MiB), and the store has " + mib(capacity) + " MiB: raise store.bytes" +
                           (spec.eager ? " or lower hierarchy.fan_in" : ""));
}

// Leaf accumulators that `incoming` more updates will allocate: one for each slot they are the
// first of.
uint32_t JobManager::accumulatorsToOpen(const Job& job, uint32_t incoming) const {
  const size_t cursor = std::min<size_t>(job.cursor, job.plan.leaves - 1);
  const auto routed = static_cast<uint32_t>(job.routed[cursor].size());
  const uint32_t expected = job.plan.nodes[cursor].expected;
  const uint32_t room = expected > routed ? expected - routed : 0;
  uint32_t opened = routed == 0 && room > 0 ? 1 : 0;
  if (incoming > room) {
    const uint32_t fanIn = std::max<uint32_t>(job.plan.fanIn, 1);
    opened += (incoming - room + fanIn - 1) / fanIn;
  }
  return opened;
}

void JobManager::doneReceiving(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto found = find(id);
  if (found && found.value()->receiving > 0) found.value()->receiving--;
}

size_t JobManager::slotFor(Job& job, bool recovered) {
  size_t slot = std::min<size_t>(job.cursor, job.plan.leaves - 1);
  auto full = [&](size_t s) { return job.routed[s].size() >= job.plan.nodes[s].expected; };
  while (slot + 1 < job.plan.leaves && full(slot)) ++slot;
  job.cursor = slot;
  if (job.plan.nodes[slot].role != AggregatorRole::Leaf || recovered) return slot;
  if (full(slot)) {                 // every slot is full: more arrivals than planned
    if (!job.cluster) return slot;  // a standalone round admits no more than it planned
    if (auto grown = growLeaf(job, slot + 1, job.plan.fanIn); !grown) {
      LIFL_WARN("job " << job.spec.id << ": cannot add a leaf: " << grown.error().detail);
      return slot;
    }
    LIFL_INFO("job " << job.spec.id << ": more updates than planned here, leaf "
                     << job.instances[slot + 1] << " added");
    return job.cursor = slot + 1;
  }
  // A robust rule applied per leaf is defined over the slot's updates: a slot split between
  // two leaves would give another result (found under the sanitizers, whose slower leaves
  // fell behind), so such a slow leaf is waited for.
  if (job.spec.strategy.robust()) return slot;
  // A leaf is judged once it was sent as many updates as the depth that marks it behind: a
  // helper just assigned has its assignment in its queue too, and must not be cut for that.
  if (!scaleUpDepth_ || !queueDepth_ || job.routed[slot].size() < scaleUpDepth_) return slot;
  const InstanceId leaf = job.instances[slot];
  const uint64_t depth = queueDepth_(leaf);
  if (depth < scaleUpDepth_) return slot;
  const uint32_t rest =
      job.plan.nodes[slot].expected - static_cast<uint32_t>(job.routed[slot].size());
  if (auto grown = growLeaf(job, slot + 1, rest); !grown) {
    LIFL_WARN("job " << job.spec.id << ": leaf " << leaf << " is " << depth
                     << " descriptors behind, but no leaf can be added: " << grown.error().detail);
    return slot;
  }
  job.plan.nodes[slot].expected = static_cast<uint32_t>(job.routed[slot].size());
  sendFlush(job, slot);  // the slow leaf keeps what it has
  LIFL_INFO("job " << job.spec.id << ": leaf " << leaf << " is " << depth
                   << " descriptors behind; leaf " << job.instances[slot + 1]
                   << " takes the rest of its slot (" << rest << " updates)");
  return job.cursor = slot + 1;
}

}  // namespace lifl::dataplane
