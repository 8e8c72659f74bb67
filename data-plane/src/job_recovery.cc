// Recovery after an aggregator dies (DESIGN.md invariant 4): what the dead instance owned
// says where each accepted update is; nothing is lost or counted twice.
#include <algorithm>
#include <unordered_set>
#include <utility>

#include "job_manager_internal.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/job_manager.h"
#include "lifl/dataplane/partial.h"
#include "lifl/dataplane/safetensors.h"

namespace lifl::dataplane {

using namespace detail;

void JobManager::onAck(const Descriptor& d) {
  // Acks for partials the agent re-sent on behalf of a dead aggregator: release the inputs
  // recorded at recovery (the partial itself may already be freed by its parent).
  std::lock_guard lock(mutex_);
  auto it = resentInputs_.find(d.generation);
  if (it == resentInputs_.end()) return;
  for (const auto& h : it->second) {
    auto in = store_.resolve(h);
    if (in && in.value().container() == d.generation && in.value().owner() == kAgentInstance)
      store_.release(h);
  }
  resentInputs_.erase(it);
}

void JobManager::onInstanceDeath(InstanceId dead) {
  std::lock_guard lock(mutex_);
  for (auto& [_, job] : jobs_) {
    if (job->state != State::Active) continue;
    if (job->cluster && job->cluster->top == dead) {
      recoverClusterTop(*job, dead);
      return;
    }
    // The last node with the instance: a co-located parent's role, not its leaf slot's.
    for (size_t node = job->instances.size(); node-- > 0;) {
      if (job->instances[node] == dead) {
        recover(*job, node, dead);
        return;
      }
    }
  }
  reclaimUnowned(dead);
}

void JobManager::reclaimUnowned(InstanceId dead) {
  for (const auto& object : store_.ownedBy(dead)) store_.release(object.handle());
}

// Clients of `node`'s subtree whose updates are already summed outside its accumulator: in a
// sealed partial of the dead instance (wherever it is now), or in any partial of an ancestor,
// which releases the dead one's partials once its own sealed accumulator covers them.
// Counted by client key, so a sum held in two places (a partial and the ancestor's
// accumulator it was folded into) counts once.
//
// The ancestors keep running while this reads. A key only moves by being copied into a new
// partial before the one holding it is released, so a scan can miss it only if a partial it
// listed was released before the scan ended: then it scans again.
uint32_t JobManager::coveredClients(const Job& job, size_t node, InstanceId dead) const {
  std::unordered_set<InstanceId> ancestors;
  for (int p = job.plan.nodes[node].parent; p >= 0;
       p = job.plan.nodes[static_cast<size_t>(p)].parent)
    ancestors.insert(job.instances[static_cast<size_t>(p)]);
  auto holdsSums = [&](const ObjectRef& o) {
    return o.kind() == ObjectKind::Partial && o.round() == job.round && o.job() == job.slot &&
           ((o.producer() == dead && o.sealed()) || ancestors.count(o.producer()));
  };
  std::unordered_set<uint64_t> summed;
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::vector<ObjectRef> partials;
    store_.forEach([&](const ObjectRef& o) {
      if (holdsSums(o)) partials.push_back(o);
    });
    summed.clear();
    for (const auto& o : partials) {
      const PartialView partial(o);
      if (!partial.valid()) continue;  // an ancestor's accumulator still being set up
      const uint32_t clients = std::min(partial.header().clients, partial.header().keyCapacity);
      summed.insert(partial.keys(), partial.keys() + clients);
    }
    if (std::all_of(partials.begin(), partials.end(), [&](const ObjectRef& o) {
          return static_cast<bool>(store_.resolve(o.handle()));
        }))
      break;
  }
  uint32_t covered = 0;
  for (size_t leaf = 0; leaf < job.plan.leaves; ++leaf) {
    bool below = leaf == node;
    for (int p = job.plan.nodes[leaf].parent; !below && p >= 0;
         p = job.plan.nodes[static_cast<size_t>(p)].parent)
      below = static_cast<size_t>(p) == node;
    if (below)
      for (uint64_t key : job.routed[leaf]) covered += summed.count(key) ? 1 : 0;
  }
  return covered;
}

// What a dead aggregator owned, sorted out (DESIGN.md invariant 4): its sealed partials are
// re-sent to `parent` (none: it was a top, and they are its checkpoints, for the
// replacement), its accumulator is dropped, inputs inside a sealed partial are held until it
// is acknowledged (or freed, under a top's checkpoint), and the returned inputs, counted
// nowhere yet, go to the replacement.
std::vector<ObjectRef> JobManager::reclaim(Job& job, InstanceId dead,
                                           std::optional<InstanceId> parent) {
  const bool top = !parent;
  const auto owned = store_.ownedBy(dead);
  // Classify first, act after: releasing while classifying would let a later lookup read a
  // freed header.
  std::unordered_map<uint64_t, ObjectRef> live;
  store_.forEach([&](const ObjectRef& o) { live.emplace(o.handle().generation, o); });
  // A partial inside another sealed partial of the dead instance (a hosted leaf slot's,
  // folded into the parent's) is that partial's input, not a sum of its own.
  auto insideSealed = [&](const ObjectRef& o) {
    if (!o.container()) return false;
    auto c = live.find(o.container());
    return c != live.end() && c->second.sealed() && c->second.producer() == dead;
  };
  std::vector<ObjectRef> redeliver, release;
  for (const auto& o : owned) {
    if (o.kind() == ObjectKind::Model) continue;  // a publication on its way to the agent
    if (o.round() != job.round || o.job() != job.slot || o.kind() == ObjectKind::Control) {
      release.push_back(o);  // a finished round's leftovers, an unread assignment
      continue;
    }
    if (o.kind() == ObjectKind::Partial && o.producer() == dead && !insideSealed(o)) {
      if (!o.sealed()) {
        release.push_back(o);  // the dead accumulator: its inputs are re-delivered below
        continue;
      }
      if (top) {  // a checkpoint: it covers the inputs the top released
        redeliver.push_back(o);
        continue;
      }
      resentInputs_[o.handle().generation];  // its inputs are added below
      // The parent acks to the agent (duplicates too); onAck releases the inputs.
      send(roundDescriptor(job, *parent, DescriptorKind::Partial, &o));
      continue;
    }
    // An input: an update, or a child's partial.
    auto container = o.container() ? live.find(o.container()) : live.end();
    if (o.container() == 0 || (container != live.end() && !container->second.sealed())) {
      redeliver.push_back(o);  // not counted anywhere yet
    } else if (!top && container != live.end() && container->second.owner() == dead) {
      o.setOwner(kAgentInstance);  // in a sealed partial re-sent above: held until its ack
      resentInputs_[o.container()].push_back(o.handle());
    } else {
      release.push_back(o);  // in a partial its parent folded, or in a top's checkpoint
    }
  }
  for (const auto& o : release) store_.release(o.handle());
  return redeliver;
}

void JobManager::redeliver(const Job& job, InstanceId to, const std::vector<ObjectRef>& inputs) {
  for (const auto& o : inputs) {
    o.setOwner(to);
    Descriptor d = roundDescriptor(
        job, to, o.kind() == ObjectKind::Update ? DescriptorKind::Update : DescriptorKind::Partial,
        &o);
    d.value = o.value();
    send(d);
  }
}

// The extra top of a round re-rooted on this node (job_cluster.cc) died: a new one starts
// from what the dead one owned, as any top's replacement does.
void JobManager::recoverClusterTop(Job& job, InstanceId dead) {
  job.recoveries++;
  const auto inputs = reclaim(job, dead, std::nullopt);
  LIFL_WARN("job " << job.spec.id << ": the re-rooted top " << dead << " died in round "
                   << job.round << "; " << inputs.size() << " inputs to re-deliver");
  job.cluster->top = 0;
  auto fresh = startClusterTop(job);
  if (!fresh) {
    job.failure = "cannot replace the round's top: " + fresh.error().detail;
    LIFL_ERROR(job.failure);
    finish(job, State::Failed);
    return;
  }
  redeliver(job, job.cluster->top, inputs);
}

// Recovery after an aggregator died (DESIGN.md invariant 4). What the dead instance owned
// tells exactly where each accepted update is:
//  - a sealed partial it produced covers its inputs: re-send it to the parent (which drops
//    duplicates) and release the inputs when the parent acknowledges;
//  - an unsealed partial was its accumulator: the sums in it are lost, so drop it...
//  - ...and re-deliver every input not covered by a sealed partial to a replacement, which
//    is assigned the same role for the clients not yet covered.
void JobManager::recover(Job& job, size_t node, InstanceId dead) {
  job.recoveries++;
  const PlanNode& planNode = job.plan.nodes[node];
  const InstanceId parent = parentOf(job, node);
  // A top has no parent: its sealed partials are its checkpoints, re-delivered to the
  // replacement, which counts them itself.
  const bool top = planNode.role == AggregatorRole::Top && parent == 0;
  const uint32_t covered = top ? 0 : coveredClients(job, node, dead);
  const auto inputs = reclaim(job, dead, top ? std::nullopt : std::optional(parent));

  const uint32_t remaining = planNode.expected > covered ? planNode.expected - covered : 0;
  LIFL_WARN("job " << job.spec.id << ": " << roleName(planNode.role) << " " << dead
                   << " died in round " << job.round << "; " << covered
                   << " updates covered by sealed partials, " << inputs.size()
                   << " inputs to re-deliver");

  auto replacement = supervisor_.reserve();
  if (!replacement) {
    job.failure = "cannot replace aggregator: " + replacement.error().detail;
    LIFL_ERROR(job.failure);
    finish(job, State::Failed);
    return;
  }
  const InstanceId fresh = replacement.value();
  for (auto& id : job.instances)  // a co-located leaf slot moves with its parent's role
    if (id == dead) id = fresh;
  if (auto assigned =
          supervisor_.assign(fresh, kAggregator, aggregatorParams(job, node, remaining));
      !assigned) {
    job.failure = "cannot assign replacement: " + assigned.error().detail;
    finish(job, State::Failed);
    return;
  }
  for (size_t child = 0; child < job.plan.nodes.size(); ++child) {
    if (job.plan.nodes[child].parent != static_cast<int>(node) || job.instances[child] == fresh)
      continue;
    Descriptor d = roundDescriptor(job, job.instances[child], DescriptorKind::Reparent);
    d.aux = fresh;
    send(d);
  }
  redeliver(job, fresh, inputs);
  // A leaf slot whose updates were all routed is flushed again (its own, or the one the
  // replacement hosts).
  for (size_t leaf = 0; leaf < job.plan.leaves; ++leaf)
    if (job.instances[leaf] == fresh && job.plan.nodes[leaf].role == AggregatorRole::Leaf &&
        (job.routed[leaf].size() >= job.plan.nodes[leaf].expected || job.closing))
      sendFlush(job, leaf);
}

}  // namespace lifl::dataplane
