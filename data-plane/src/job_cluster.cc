// A job in cluster mode (docs/architecture.md "Several nodes"). The controller admits every
// update and runs the rounds; this node folds the updates its gateway accepted in a subtree
// of local leaves under one subtree root. On the round's root node that root is the top;
// elsewhere it is a middle whose partial the agent sends to the root node's agent, which
// writes it into its own store and hands it to the top.
#include <utility>

#include "job_manager_internal.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/cluster_link.h"
#include "lifl/dataplane/job_manager.h"
#include "lifl/dataplane/partial.h"
#include "lifl/dataplane/safetensors.h"

namespace lifl::dataplane {

using namespace detail;

namespace {
constexpr uint32_t kNotStarted = UINT32_MAX;
}

Result<Admission> JobManager::admitClustered(Job& job, UpdateMeta& meta) {
  if (job.state != State::Active)
    return conflict("job_finished", "job " + job.spec.id + " is no longer taking updates");
  const std::string key = acceptKey(meta);
  if (job.accepted.count(key) || job.parkedAccepted.count(key))
    return Admission{true, job.round, maxUpdateBytes(job.spec)};
  // One round ahead is let through: the controller may have started it before this node
  // heard; the controller decides.
  if (meta.round > job.round + 1)
    return conflict("wrong_round", "update is for round " + std::to_string(meta.round) +
                                       " but job " + job.spec.id + " is at round " +
                                       std::to_string(job.round));
  if (job.spec.update == UpdateMode::Delta && !job.model)
    return conflict("no_model", "a delta job needs its initial model before updates");
  if (job.scaledToZero) {
    if (auto deployed = deployTree(job); !deployed)
      return unavailable("no_instances",
                         "cannot bring the job's aggregators back: " + deployed.error().detail);
  }
  if (!job.cluster->inFlight.insert(meta.source).second)
    return conflict("update_in_progress", "this client's update is still being received");
  return Admission{false, job.round, maxUpdateBytes(job.spec)};
}

Result<uint32_t> JobManager::commitClustered(const std::string& id, Job* job,
                                             const UpdateMeta& meta, ObjectRef update) {
  // The controller's answer decides the round; asked without the lock (a network round trip).
  auto answer = cluster_->admit(id, meta.round, meta.source, meta.id, meta.numExamples);
  std::lock_guard lock(mutex_);
  if (!job->cluster) return conflict("job_finished", "job " + id + " left cluster mode");
  auto& c = *job->cluster;
  c.inFlight.erase(meta.source);
  if (!answer) return answer.error();
  const ClusterAdmission& a = answer.value();
  if (a.duplicate) {  // counted before, maybe through another gateway
    store_.release(update.handle());
    return a.round;
  }
  metrics_.updateAccepted(id, update.size());
  if (job->state == State::Active && a.round == job->round && c.startedRound == job->round &&
      !c.reported && !c.closed) {
    route(*job, update, meta);
    return a.round;
  }
  if (job->state == State::Active && a.round >= job->round) {
    // For a round this node has not started yet: held until the controller starts it.
    UpdateMeta parked = meta;
    parked.late = a.round > job->round || c.reported;
    job->parkedAccepted.insert(acceptKey(parked));
    update.setOwner(kAgentInstance);
    job->parked.push_back({update.handle(), parked});
    return a.round;
  }
  LIFL_ERROR("job " << id << ": the controller admitted " << meta.id << " into round " << a.round
                    << " but this node is at round " << job->round << "; it is dropped");
  return internal("round_mismatch", "the update's round is not running on this node");
}

Result<void> JobManager::installModel(Job& job, const std::string& bytes) {
  LIFL_TRY(view, parseSafetensors(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()));
  LIFL_TRYV(checkMatchesModel(view, job.spec));
  LIFL_TRY(model, store_.allocate(bytes.size(), ObjectKind::Model, kAgentInstance));
  std::memcpy(model.data(), bytes.data(), bytes.size());
  model.setTag(job.slot, job.round);
  model.seal();
  if (job.model) store_.release(*job.model);
  job.model = model.handle();
  return success();
}

Result<void> JobManager::clusterSync(const std::string& id, const nlohmann::json& cmd) {
  if (!cluster_) return badRequest("not_clustered", "this agent runs without a controller");
  std::string state, modelUrl, modelTag;
  uint32_t round = 0;
  std::optional<JobSpec> spec;
  try {
    auto parsed = jobSpecFromJson(cmd.at("spec"));
    if (!parsed) return parsed.error();
    spec = std::move(parsed).value();
    state = cmd.at("state");
    round = cmd.at("round");
    modelUrl = cmd.value("model_url", "");
    modelTag = cmd.value("model_tag", "");
  } catch (const nlohmann::json::exception& e) {
    return badRequest("bad_command", e.what());
  }
  if (spec->id != id) return badRequest("bad_command", "the spec names another job");
  bool fetch = false;
  {
    std::lock_guard lock(mutex_);
    if (!jobs_.count(id)) {
      auto job = std::make_unique<Job>();
      job->slot = nextSlot_++;
      job->spec = std::move(*spec);
      job->cluster.emplace();
      job->cluster->startedRound = kNotStarted;
      LIFL_TRYV(createInitialModel(*job));
      job->cluster->modelTag = std::string("0:") + (job->model ? "init" : "none");
      bySlot_[job->slot] = job.get();
      jobs_[id] = std::move(job);
    }
    LIFL_TRY(job, find(id));
    if (!job->cluster) return conflict("job_exists", "job " + id + " runs standalone here");
    fetch = !modelUrl.empty() && !modelTag.empty() && job->cluster->modelTag != modelTag;
  }
  std::string bytes;
  if (fetch) {  // the model of the round, from the node that produced it (or the controller)
    auto got = cluster_->fetchModel(modelUrl, id);
    const std::string fallback = cmd.value("fallback_url", "");
    if ((!got || got.value().second != round) && !fallback.empty() && fallback != modelUrl)
      got = cluster_->fetchModel(fallback, id);
    if (!got) return got.error();
    if (got.value().second != round)
      return unavailable("model_not_ready", "the model source serves round " +
                                                std::to_string(got.value().second) + ", not " +
                                                std::to_string(round));
    bytes = std::move(got.value().first);
  }
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  if (fetch) {
    job->round = round;
    LIFL_TRYV(installModel(*job, bytes));
    job->cluster->modelTag = modelTag;
  }
  if (state != "active") {
    releaseClusterRound(*job);
    if (job->state == State::Active)
      finish(*job, state == "done"     ? State::Done
                   : state == "failed" ? State::Failed
                                       : State::Cancelled);
    job->failure = cmd.value("failure", "");
    return success();
  }
  auto& c = *job->cluster;
  const uint32_t epoch = cmd.value("epoch", 0u);
  if (c.startedRound == round && c.epoch == epoch) {
    // A repeat; or the initial model set (PUT) after the round started, before any update:
    // the tree is deployed again, so that a delta job's top has it as its base.
    if (fetch && job->received == 0 && job->parked.empty()) return startClusterRound(*job, cmd);
    return success();
  }
  if (c.startedRound == round && epoch > c.epoch) return reroot(*job, cmd);  // root was lost
  return startClusterRound(*job, cmd);
}

Result<void> JobManager::startClusterRound(Job& job, const nlohmann::json& cmd) {
  auto& c = *job.cluster;
  const uint32_t round = cmd.at("round"), epoch = cmd.value("epoch", 0u);
  releaseClusterRound(job);  // the last round's kept partials: its model exists
  if (c.startedRound == round) {
    // The same round again, from scratch (the controller found nothing to keep): the old
    // tree's work is void. Released instances free what they held.
    releaseTree(job);
  }
  c.epoch = epoch;
  c.root = cmd.value("root", "");
  c.rootUrl = cmd.value("root_url", "");
  c.isRoot = cmd.value("is_root", false);
  c.share = cmd.value("share", 0u);
  c.closeRequested = c.closed = c.reported = false;
  c.closeAt = c.total = c.partialsOut = 0;
  c.partialsIn.clear();
  c.startedRound = round;
  job.round = round;
  // The controller's fan-in for this node: larger than the job's when the node's capacity
  // bounds its leaves.
  const uint32_t fanIn = cmd.value("fan_in", job.spec.fanIn);
  job.plan = planner_(PlanRequest{std::max<uint32_t>(c.share, 1), fanIn, job.spec.levels,
                                  job.arrivalRate, job.leafThroughput});
  // The subtree root counts clients up to the whole round; the close tells it the real count.
  job.plan.nodes[static_cast<size_t>(job.plan.top())].expected = job.spec.clientsPerRound;
  LIFL_TRYV(deployTree(job));
  job.received = job.routedTotal = 0;
  job.routed.assign(job.plan.leaves, {});
  job.cursor = 0;
  job.sources.clear();
  job.acceptedBefore = std::exchange(job.accepted, std::move(job.parkedAccepted));
  job.parkedAccepted.clear();
  job.closing = false;
  job.roundOpened = std::chrono::steady_clock::now();
  job.roundStarted = !job.parked.empty();
  if (job.roundStarted) job.roundStart = job.roundOpened;
  LIFL_INFO("job " << job.spec.id << ": round " << round << " (epoch " << epoch
                   << "): " << (c.isRoot ? "root" : "member") << ", " << job.plan.leaves
                   << " leaves for a share of " << c.share);
  for (auto& p : std::exchange(job.parked, {})) {
    auto update = store_.resolve(p.object);
    if (update) route(job, update.value(), p.meta);
  }
  return success();
}

Result<void> JobManager::clusterClose(const std::string& id, const nlohmann::json& cmd) {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  if (!job->cluster || job->state != State::Active) return success();
  auto& c = *job->cluster;
  if (cmd.value("round", 0u) != c.startedRound || cmd.value("epoch", 0u) != c.epoch || c.reported)
    return success();  // for a round or epoch this node has left
  const uint32_t total = cmd.value("total", 0u);
  if (c.closed && c.isRoot && total != c.total) {  // a node was lost: fewer clients in all
    if (!c.top) job->plan.nodes[static_cast<size_t>(job->plan.top())].expected = total;
    Descriptor d = roundDescriptor(*job, topOf(*job), DescriptorKind::Retarget);
    d.value = total;
    send(d);
  }
  c.total = total;
  c.closeAt = cmd.value("count", 0u);
  c.closeRequested = true;
  maybeCloseCluster(*job);
  return success();
}

void JobManager::maybeCloseCluster(Job& job) {
  auto& c = *job.cluster;
  // Every update admitted here must be routed first (some may be between the controller's
  // answer and route()).
  if (!c.closeRequested || c.closed || job.routedTotal < c.closeAt) return;
  c.closed = true;
  LIFL_INFO("job " << job.spec.id << ": round " << job.round << " closes here with "
                   << job.routedTotal << " updates" << (c.isRoot ? ", the top expects " : "")
                   << (c.isRoot ? std::to_string(c.total) : ""));
  if (c.top) {  // re-rooted here: the subtree counts its own, the top the whole round
    closeTree(job);
    Descriptor d = roundDescriptor(job, c.top, DescriptorKind::Retarget);
    d.value = c.total;
    send(d);
    return;
  }
  closeTree(job, c.isRoot ? std::optional<uint32_t>(c.total) : std::nullopt);
}

void JobManager::reportModel(Job& job, const Descriptor& d) {
  auto& c = *job.cluster;
  c.reported = true;
  c.modelTag = std::to_string(job.round) + ":agg";
  const auto& last = job.history.back();
  cluster_->report("/v1/cluster/rounds", {{"job", job.spec.id},
                                          {"round", job.round - 1},
                                          {"epoch", c.epoch},
                                          {"clients", d.value},
                                          {"weight", last.weight},
                                          {"seconds", last.seconds},
                                          {"node", cluster_->config().nodeName},
                                          {"url", cluster_->config().advertiseUrl}});
}

void JobManager::onPartial(const Descriptor& d) {
  std::lock_guard lock(mutex_);
  auto it = bySlot_.find(d.job);
  auto object = store_.resolve(d);
  if (!object) return;
  Job* job = it == bySlot_.end() ? nullptr : it->second;
  // A member's subtree root, or a re-rooted node's own subtree root (its top is apart).
  if (!job || !job->cluster || (job->cluster->isRoot && !job->cluster->top) ||
      job->state != State::Active || d.round != job->round) {
    LIFL_WARN("a partial of job slot " << d.job << " round " << d.round << " has no destination");
    return;  // its producer keeps it (unacknowledged) until its role is released
  }
  object.value().setOwner(kAgentInstance);
  forwardPartial(*job, d);
}

// The partial goes to the round's root node over the network, straight from the store. It is
// kept here (not freed) until the round completes: if the root is lost, the controller
// re-roots the round and every kept partial is sent again, to the new root.
void JobManager::forwardPartial(Job& job, const Descriptor& from) {
  auto& c = *job.cluster;
  c.partialsOut++;
  const std::string id = job.spec.id;
  const uint32_t round = job.round;
  PartialTransfer t;
  t.job = id;
  t.round = round;
  t.partial = ObjectHandle{from.offset, from.length, from.generation};
  t.target = [this, id, round]() -> std::optional<PartialTarget> {
    std::lock_guard lock(mutex_);
    auto j = find(id);
    if (!j || j.value()->state != State::Active || !j.value()->cluster ||
        j.value()->cluster->startedRound != round || j.value()->cluster->reported)
      return std::nullopt;
    return PartialTarget{j.value()->cluster->rootUrl, j.value()->cluster->epoch};
  };
  t.done = [this, id, round, from](std::optional<uint32_t> epoch) {
    std::lock_guard lock(mutex_);
    auto j = find(id);
    const bool current = j && j.value()->cluster && j.value()->cluster->startedRound == round &&
                         j.value()->state == State::Active;
    if (!epoch || !current) {
      store_.release(ObjectHandle{from.offset, from.length, from.generation});
      return;
    }
    auto& kept = j.value()->cluster->kept;
    if (std::none_of(kept.begin(), kept.end(),
                     [&](const Descriptor& k) { return k.generation == from.generation; })) {
      Descriptor ack = from;  // the subtree root releases the inputs inside the partial
      ack.dst = from.src;
      ack.kind = DescriptorKind::Ack;
      send(ack);
      kept.push_back(from);
    }
    cluster_->report(
        "/v1/cluster/forwarded",
        {{"job", id}, {"round", round}, {"epoch", *epoch}, {"node", cluster_->config().nodeName}});
  };
  cluster_->forward(std::move(t));
}

InstanceId JobManager::topOf(const Job& job) const {
  if (job.cluster && job.cluster->top) return job.cluster->top;
  return job.instances[static_cast<size_t>(job.plan.top())];
}

void JobManager::releaseClusterRound(Job& job) {
  auto& c = *job.cluster;
  for (const auto& k : std::exchange(c.kept, {}))
    store_.release(ObjectHandle{k.offset, k.length, k.generation});
  if (c.top) supervisor_.release(std::exchange(c.top, 0));
}

// The root node was lost mid-round (docs/architecture.md "Several nodes"): this node keeps
// its subtree and what it admitted; the new root gets a top of its own, and every node sends
// its subtree's partial (again, if it had reached the lost root) to the new root.
Result<void> JobManager::reroot(Job& job, const nlohmann::json& cmd) {
  auto& c = *job.cluster;
  c.epoch = cmd.value("epoch", 0u);
  c.root = cmd.value("root", "");
  c.rootUrl = cmd.value("root_url", "");
  c.partialsIn.clear();
  const bool root = cmd.value("is_root", false);
  if (root && !c.isRoot) {
    LIFL_TRYV(startClusterTop(job));
    c.isRoot = true;
  }
  LIFL_INFO("job " << job.spec.id << ": round " << job.round << " re-rooted on " << c.root
                   << " (epoch " << c.epoch << "), " << c.kept.size()
                   << " partials of this node to send again");
  for (const auto& k : std::exchange(c.kept, {})) forwardPartial(job, k);
  return success();
}

// The round's top on a node that became its root mid-round, beside the node's own subtree
// (whose plan has no top of its own here).
Result<void> JobManager::startClusterTop(Job& job) {
  auto& c = *job.cluster;
  LIFL_TRY(top, supervisor_.reserve());
  nlohmann::json params = aggregatorParams(job, static_cast<size_t>(job.plan.top()),
                                           c.closed ? c.total : job.spec.clientsPerRound);
  params["role"] = "top";
  params["parent"] = 0;
  params.erase("slot");
  if (job.spec.update == UpdateMode::Delta && job.model)
    params["base"] = {{"offset", job.model->offset},
                      {"length", job.model->length},
                      {"generation", job.model->generation}};
  if (auto assigned = supervisor_.assign(top, kAggregator, params); !assigned) {
    supervisor_.release(top);
    return assigned.error();
  }
  c.top = top;
  return success();
}

Result<std::optional<uint64_t>> JobManager::admitRemotePartial(const std::string& id,
                                                               uint32_t round, uint32_t epoch,
                                                               const std::string& key) {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  if (!job->cluster || !job->cluster->isRoot || job->state != State::Active ||
      job->cluster->startedRound != round || job->cluster->epoch != epoch || job->cluster->reported)
    return conflict("not_root", "this node is not the root of round " + std::to_string(round) +
                                    " (epoch " + std::to_string(epoch) + ") of job " + id);
  if (job->cluster->partialsIn.count(key)) return std::optional<uint64_t>();
  const uint32_t n = job->spec.clientsPerRound;
  return std::optional<uint64_t>(partialBytes(job->spec.modelElements(), n, n));
}

Result<void> JobManager::deliverRemotePartial(const std::string& id, uint32_t round, uint32_t epoch,
                                              const std::string& key, ObjectRef partial) {
  std::lock_guard lock(mutex_);
  LIFL_TRY(job, find(id));
  if (!job->cluster || !job->cluster->isRoot || job->cluster->startedRound != round ||
      job->cluster->epoch != epoch || job->cluster->reported)
    return conflict("not_root", "round " + std::to_string(round) + " of job " + id +
                                    " is no longer aggregated here");
  auto& c = *job->cluster;
  if (c.partialsIn.count(key)) return success();
  PartialView view(partial);
  if (!view.valid() || view.header().elements != job->spec.modelElements() ||
      view.header().clients > job->spec.clientsPerRound)
    return badRequest("malformed_partial", "the partial does not match job " + id);
  // Its input records name objects in the sender's store: meaningless here.
  view.header().inputCount = 0;
  const InstanceId top = topOf(*job);
  partial.setTag(job->slot, job->round);
  partial.setOwner(top);  // from here the top (or its replacement) is responsible
  partial.seal();
  c.partialsIn.insert(key);
  send(roundDescriptor(*job, top, DescriptorKind::Partial, &partial));
  return success();
}

}  // namespace lifl::dataplane
