// Restarts: saving each job's state to the data dir, and restoring jobs (with the accepted
// updates of an interrupted round, from an adopted store) when the platform starts again.
#include <utility>

#include "job_manager_internal.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/job_manager.h"
#include "lifl/dataplane/partial.h"
#include "lifl/dataplane/safetensors.h"

namespace lifl::dataplane {

using namespace detail;

namespace {
const char* stateName(int s) {
  static const char* kNames[] = {"active", "done", "cancelled", "failed"};
  return kNames[s];
}
}  // namespace

nlohmann::json JobManager::savedState(const Job& job) const {
  nlohmann::json history = nlohmann::json::array();
  for (const auto& r : job.history)
    history.push_back(
        {r.round, r.clients, r.weight, r.seconds, r.byDeadline, r.meanStaleness, r.maxStaleness});
  return {{"spec", job.spec.toJson()},
          {"slot", job.slot},
          {"round", job.round},
          {"state", stateName(static_cast<int>(job.state))},
          {"history", history},
          {"failure", job.failure},
          {"late_dropped", job.lateDropped},
          {"late_folded", job.lateFolded},
          {"recoveries", job.recoveries},
          {"lost_on_restart", job.lostOnRestart}};
}

void JobManager::persist(const Job& job, bool withModel) const {
  if (!checkpoints_.enabled() || job.cluster) return;  // the controller keeps cluster jobs
  if (withModel && job.model) {
    auto model = store_.resolve(*job.model);
    if (model) {
      if (auto saved = checkpoints_.saveModel(job.spec.id, job.round, model.value()); !saved)
        LIFL_ERROR("job " << job.spec.id << ": " << saved.error().detail);
    }
  }
  if (auto saved = checkpoints_.saveState(job.spec.id, savedState(job)); !saved)
    LIFL_ERROR("job " << job.spec.id << ": " << saved.error().detail);
}

// The round a restart interrupted. If the previous agent's store was adopted, what it holds
// for this round is classified like a crash recovery of every aggregator at once: sealed
// partials not folded into another sealed partial carry their clients' sums (they go to the
// new top); updates no sealed partial covers are re-routed to the new leaves; the rest is
// covered or half-built and freed. Accepted updates that did not survive are reported lost.
void JobManager::recoverRound(Job& job,
                              const std::vector<std::pair<std::string, std::string>>& accepted) {
  std::unordered_map<uint64_t, ObjectRef> live;
  std::vector<ObjectRef> mine;
  store_.forEach([&](const ObjectRef& o) {
    live.emplace(o.handle().generation, o);
    if (o.job() == job.slot) mine.push_back(o);
  });
  auto coveredBySealed = [&](const ObjectRef& o) {
    auto c = o.container() ? live.find(o.container()) : live.end();
    return c != live.end() && c->second.sealed() && c->second.kind() == ObjectKind::Partial;
  };
  std::vector<ObjectRef> partials, updates;
  uint32_t coveredClients = 0;
  for (const auto& o : mine) {
    const bool current = o.round() == job.round;
    if (current && o.kind() == ObjectKind::Partial && o.sealed() && !coveredBySealed(o) &&
        PartialView(o).valid()) {
      partials.push_back(o);
      coveredClients += PartialView(o).header().clients;
    } else if (current && o.kind() == ObjectKind::Update && !coveredBySealed(o)) {
      updates.push_back(o);
    } else if (!job.model || o.handle().generation != job.model->generation) {
      store_.release(o.handle());  // covered, half-built, or another round's
    }
  }
  if (auto started = startRound(job, coveredClients); !started) {
    job.failure = "cannot restart: " + started.error().detail;
    job.state = State::Failed;
    return;
  }
  // Which accepted updates survived, by client key: those stay accepted (a retry is a
  // duplicate); the others are lost, reported, and their clients may push them again.
  std::unordered_set<uint64_t> surviving;
  for (const auto& p : partials) {
    PartialView view(p);
    for (uint32_t i = 0; i < std::min(view.header().clients, view.header().keyCapacity); ++i)
      surviving.insert(view.keys()[i]);
  }
  for (const auto& u : updates) surviving.insert(u.clientKey());
  std::vector<std::pair<std::string, std::string>> kept;
  for (const auto& [source, id] : accepted) {
    const std::string key = source + '\n' + id;
    if (!surviving.count(clientKeyOf(key))) continue;
    job.sources[roundSlotKey(job.spec, source, id)] = id;
    job.accepted.insert(key);
    kept.emplace_back(source, id);
  }
  job.lostOnRestart += accepted.size() - kept.size();
  checkpoints_.rewriteJournal(job.spec.id, job.round, kept);  // lost ones are counted once
  const InstanceId top = job.instances[static_cast<size_t>(job.plan.top())];
  for (const auto& p : partials) {
    send(roundDescriptor(job, top, DescriptorKind::Partial,
                         &p));  // its inputs were released above; the ack has nothing left to free
  }
  job.received += coveredClients;
  for (const auto& u : updates) {
    UpdateMeta meta;
    meta.numExamples = u.value();
    route(job, u, meta, /*recovered=*/true);
  }
}

void JobManager::restore() {
  std::lock_guard lock(mutex_);
  // What an adopted store held before this agent made anything (its own objects, such as
  // the assignments of the trees restored below, are not the previous agent's leftovers).
  std::unordered_set<uint64_t> inherited;
  store_.forEach([&](const ObjectRef& o) { inherited.insert(o.handle().generation); });
  for (uint64_t g : supervisor_.heldObjects()) inherited.erase(g);  // this agent's counters
  // A finished job's model stays in its checkpoint (offloadModel): only running jobs' models
  // come back into the store.
  const auto running = [](const nlohmann::json& st) {
    return st.value("state", "active") == "active";
  };
  for (auto& saved : checkpoints_.load(running)) {
    const auto& st = saved.state;
    auto spec = jobSpecFromJson(st.value("spec", nlohmann::json::object()));
    if (!spec) {
      LIFL_WARN("skipping a saved job: " << spec.error().detail);
      continue;
    }
    auto job = std::make_unique<Job>();
    job->spec = std::move(spec).value();
    if (jobs_.count(job->spec.id)) continue;
    job->slot = st.value("slot", 0u);
    if (job->slot == 0 || bySlot_.count(job->slot)) job->slot = nextSlot_;
    nextSlot_ = std::max(nextSlot_, job->slot + 1);
    job->round = st.value("round", 0u);
    const std::string state = st.value("state", "active");
    job->state = state == "done"        ? State::Done
                 : state == "cancelled" ? State::Cancelled
                 : state == "failed"    ? State::Failed
                                        : State::Active;
    for (const auto& r : st.value("history", nlohmann::json::array()))
      job->history.push_back({r[0], r[1], r[2], r[3], r[4], r.size() > 5 ? r[5].get<double>() : 0.0,
                              r.size() > 6 ? r[6].get<uint32_t>() : 0u});
    job->failure = st.value("failure", "");
    job->lateDropped = st.value("late_dropped", 0ull);
    job->lateFolded = st.value("late_folded", 0ull);
    job->recoveries = st.value("recoveries", 0ull);
    job->lostOnRestart = st.value("lost_on_restart", 0ull);
    if (saved.model) {
      // The tensors, and a server optimiser's state after them if it was saved.
      const uint64_t modelBytes =
          modelHeader(job->spec).size() + job->spec.modelElements() * sizeof(float);
      const uint32_t stateVectors = job->spec.strategy.stateVectors();
      const bool withState =
          stateVectors && saved.model->size() == modelBytes + uint64_t{stateVectors} *
                                                                  job->spec.modelElements() *
                                                                  sizeof(float);
      auto model = store_.allocate(saved.model->size(), ObjectKind::Model, kAgentInstance);
      if (model) {
        std::memcpy(model.value().data(), saved.model->data(), saved.model->size());
        if (withState) {
          model.value().setLength(modelBytes);
          model.value().setValue(stateVectors);
        }
        auto view = parseSafetensors(model.value().data(), model.value().size());
        if (view && checkMatchesModel(view.value(), job->spec)) {
          model.value().setTag(job->slot, job->round);
          model.value().seal();
          job->model = model.value().handle();
        } else {
          store_.release(model.value().handle());
          LIFL_WARN("job " << job->spec.id << ": its saved model does not match its spec");
        }
      }
    }
    if (job->state != State::Active)
      job->modelSaved = checkpoints_.hasModel(job->spec.id, job->round, 1);
    if (job->state == State::Active) recoverRound(*job, saved.accepted);
    LIFL_INFO("job " << job->spec.id << " restored at round " << job->round << " (" << state << ", "
                     << job->received << " updates of the round recovered, " << job->lostOnRestart
                     << " lost in all)");
    Job* raw = job.get();
    bySlot_[raw->slot] = raw;
    jobs_[raw->spec.id] = std::move(job);
    persist(*raw);
  }
  // Whatever else an adopted store holds belongs to no restored round.
  std::unordered_set<uint64_t> models;
  std::unordered_set<uint32_t> activeSlots;
  for (const auto& [_, job] : jobs_) {
    if (job->model) models.insert(job->model->generation);
    if (job->state == State::Active) activeSlots.insert(job->slot);
  }
  store_.forEach([&](const ObjectRef& o) {
    const uint64_t g = o.handle().generation;
    if (inherited.count(g) && !models.count(g) && !activeSlots.count(o.job()))
      store_.release(o.handle());
  });
}

}  // namespace lifl::dataplane
