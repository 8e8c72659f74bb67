// Round deadlines: closing a round with the updates it has, or failing it with a reason,
// and giving idle jobs' aggregators back (scale to zero).
#include <utility>

#include "job_manager_internal.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/job_manager.h"
#include "lifl/dataplane/partial.h"
#include "lifl/dataplane/safetensors.h"

namespace lifl::dataplane {

using namespace detail;

void JobManager::watchDeadlines() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    stopDeadlines_.wait_for(lock, std::chrono::milliseconds(50));
    const auto now = std::chrono::steady_clock::now();
    for (auto& [_, job] : jobs_) {
      if (job->state != State::Active || job->closing) continue;

      const double open = std::chrono::duration<double>(now - job->roundOpened).count();
      if (!job->scaledToZero && job->received + job->reserved == 0 && job->parked.empty() &&
          open >= idleSeconds_) {
        // Serverless scale to zero: an idle round gives its aggregators back to the pool
        // (which keeps only its warm target); the next update brings a tree back.
        LIFL_INFO("job " << job->spec.id << ": idle for " << open << " s, scaling to zero");
        releaseTree(*job);
        job->scaledToZero = true;
      }
      if (job->cluster || open < job->spec.deadlineSeconds) continue;  // cluster: the controller's
      if (job->received >= job->spec.requiredClients() && job->received > 0) {
        closeAtDeadline(*job);
      } else {
        failRound(*job, "round " + std::to_string(job->round) + " reached its deadline of " +
                            std::to_string(job->spec.deadlineSeconds) + " s with " +
                            std::to_string(job->received) + " of the " +
                            std::to_string(job->spec.requiredClients()) + " updates it needs");
      }
    }
  }
}

// Closes a round at its deadline with the updates routed so far: leaves that will get no
// more updates are flushed, and every middle and the top are told how many clients their
// subtree now covers. Updates still arriving are late (dropped, or parked for the next
// round). The tree's expectations are rewritten so that a crash recovery uses them too.
void JobManager::closeAtDeadline(Job& job) {
  job.closing = true;
  LIFL_INFO("job " << job.spec.id << ": round " << job.round << " closes at its deadline with "
                   << job.received << " of " << job.spec.clientsPerRound << " updates");
  closeTree(job);
}

void JobManager::closeTree(Job& job, std::optional<uint32_t> topCount) {
  std::vector<uint32_t> covered(job.plan.nodes.size(), 0);
  for (size_t node = 0; node < job.plan.nodes.size(); ++node) {  // children before parents
    PlanNode& n = job.plan.nodes[node];
    if (node < job.plan.leaves) covered[node] += job.routed[node].size();  // a routing slot
    if (n.role == AggregatorRole::Leaf) {
      if (job.routed[node].size() < n.expected) sendFlush(job, node);  // a full slot was flushed
    } else {
      if (topCount && static_cast<int>(node) == job.plan.top()) covered[node] = *topCount;
      Descriptor d = roundDescriptor(job, job.instances[node], DescriptorKind::Retarget);
      d.value = covered[node];
      send(d);
    }
    n.expected = covered[node];
    if (n.parent >= 0) covered[static_cast<size_t>(n.parent)] += covered[node];
  }
}

void JobManager::failRound(Job& job, std::string reason) {
  LIFL_ERROR("job " << job.spec.id << ": " << reason);
  job.failure = std::move(reason);
  finish(job, State::Failed);  // released instances free what they held
}

}  // namespace lifl::dataplane
