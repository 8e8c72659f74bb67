// Jobs and rounds across nodes. The controller admits every update (so a round takes
// exactly `clients_per_round`, and a client is counted once whichever gateway it used),
// closes the round when it is full or at its deadline, tells each node how many updates
// its subtree covers, and starts the next round when the root node reports the new model.
#include <cmath>

#include "controller_state.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/safetensors.h"

namespace lifl::control {

namespace {
std::string acceptKey(const std::string& source, const std::string& id) {
  return source + '\n' + id;
}
double secondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
}  // namespace

nlohmann::json specJson(const JobSpec& spec) { return spec.toJson(); }

Result<ClusterJob*> Controller::State::find(const std::string& id) const {
  auto it = jobs.find(id);
  if (it == jobs.end()) return notFound("unknown_job", "no job named " + id);
  return it->second.get();
}

std::string Controller::State::modelUrl(const ClusterJob& job) const {
  // The node that produced the model serves it; if it is gone, the controller's checkpoint.
  for (const auto& [name, n] : nodes)
    if (n.live && n.url == job.modelSource) return job.modelSource;
  return job.hasModel ? selfUrl : "";
}

// Which model a node must hold for the job's current round: agents compare it with their
// own and fetch the model when it differs.
std::string Controller::State::modelTag(const ClusterJob& job) const {
  if (job.round > 0) return std::to_string(job.round) + ":agg";
  if (job.hasModel) return "0:put";
  return job.spec.init == ModelInit::None ? "0:none" : "0:init";
}

void Controller::State::sendJob(ClusterJob& job, const std::string& node, bool reroot) {
  const std::string& root = job.plan.root;
  nlohmann::json body = {
      {"spec", job.spec.toJson()},
      {"state", job.state},
      {"round", job.round},
      {"epoch", job.epoch},
      {"root", root},
      {"root_url", job.nodeUrls.count(root) ? job.nodeUrls[root] : ""},
      {"node", node},
      {"is_root", node == root},
      {"share", job.plan.shares.count(node) ? job.plan.shares[node] : 0},
      {"fan_in", job.plan.fanIns.count(node) ? job.plan.fanIns[node] : job.spec.fanIn},
      {"model_url", modelUrl(job)},
      {"fallback_url", job.hasModel ? selfUrl : ""},
      {"model_tag", modelTag(job)},
      {"failure", job.failure},
      {"reroot", reroot}};
  command(node, "PUT", "/v1/cluster/jobs/" + job.spec.id, body);
}

void Controller::State::sendClose(ClusterJob& job, const std::string& node) {
  uint32_t count = 0;
  for (const auto& [_, a] : job.admitted) count += a.node == node;
  nlohmann::json body = {
      {"round", job.round}, {"epoch", job.epoch}, {"count", count}, {"total", job.admitted.size()}};
  command(node, "POST", "/v1/cluster/jobs/" + job.spec.id + "/close", body);
}

Result<void> Controller::State::startRound(ClusterJob& job) {
  auto live = liveNodes();
  if (live.empty()) return unavailable("no_nodes", "no live node agent is registered");
  for (auto& n : live)
    if (auto a = job.arrivals.find(n.node); a != job.arrivals.end()) n.arrivals = a->second;
  job.plan = planCluster(job.spec.clientsPerRound, job.spec.fanIn, live);
  job.nodeUrls.clear();
  for (const auto& n : live) job.nodeUrls[n.node] = nodes[n.node].url;
  job.admitted = std::move(job.next);
  job.next.clear();
  job.lateFolded += job.admitted.size();
  job.forwarded.clear();
  job.closing = false;
  job.closedByDeadline = false;
  job.roundOpened = Clock::now();
  job.firstAdmission.reset();
  if (!job.admitted.empty()) job.firstAdmission = job.roundOpened;
  for (const auto& [source, a] : job.admitted) journal(job, job.round, source, a);
  persist(job);
  LIFL_INFO("job " << job.spec.id << ": round " << job.round << " (epoch " << job.epoch << ") on "
                   << live.size() << " nodes, root " << job.plan.root << ", "
                   << job.plan.plan.leaves << " leaves, " << job.plan.crossNodeEdges
                   << " cross-node edges");
  for (const auto& n : live) sendJob(job, n.node);
  if (job.admitted.size() >= job.spec.clientsPerRound) closeRound(job, false);
  return success();
}

Result<nlohmann::json> Controller::State::createJob(JobSpec spec) {
  std::vector<std::pair<std::shared_ptr<NodeCommands>, uint64_t>> sent;
  const std::string id = spec.id;
  {
    std::lock_guard lock(mutex);
    if (jobs.count(spec.id)) return conflict("job_exists", "a job named " + spec.id + " exists");
    auto job = std::make_unique<ClusterJob>();
    job->spec = std::move(spec);
    LIFL_TRYV(startRound(*job));
    for (const auto& [node, _] : job->nodeUrls)
      if (auto& c = nodes[node].commands) sent.emplace_back(c, c->lastQueued());
    jobs[job->spec.id] = std::move(job);
  }
  // 201 once every node has the job (bounded): a client may push to any gateway at once.
  for (const auto& [commands, seq] : sent)
    commands->waitDelivered(seq, config.commandTimeoutSeconds);
  return nlohmann::json{{"id", id}, {"round", 0}};
}

Result<void> Controller::State::setInitialModel(const std::string& id, const std::string& bytes) {
  std::vector<std::pair<std::shared_ptr<NodeCommands>, uint64_t>> sent;
  {
    std::lock_guard lock(mutex);
    LIFL_TRY(job, find(id));
    if (!job->active() || job->round != 0 || !job->admitted.empty())
      return conflict("model_locked",
                      "the initial model can be set only before round 0 receives updates");
    // Checked here as a gateway checks it: the nodes must not be handed a model they reject.
    const auto* data = reinterpret_cast<const std::byte*>(bytes.data());
    LIFL_TRY(view, dataplane::parseSafetensors(data, bytes.size()));
    LIFL_TRYV(dataplane::checkMatchesModel(view, job->spec));
    LIFL_TRYV(dataplane::checkFinite(data, view));
    const std::string path = modelPath(id, 0), tmp = path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) return systemError("open " + tmp, errno);
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    if (std::fclose(f) != 0 || !ok || std::rename(tmp.c_str(), path.c_str()) != 0)
      return internal("checkpoint_failed", "cannot write " + path);
    job->hasModel = true;
    job->modelSource = selfUrl;
    persist(*job);
    for (const auto& [node, _] : job->nodeUrls) {
      sendJob(*job, node);  // they fetch it
      if (auto& c = nodes[node].commands) sent.emplace_back(c, c->lastQueued());
    }
  }
  for (const auto& [commands, seq] : sent)
    commands->waitDelivered(seq, config.commandTimeoutSeconds);
  return success();
}

void Controller::State::recordLost(ClusterJob& job, const std::string& source, const Admitted& a,
                                   const std::string& reason) {
  job.lost.push_back({{"round", job.round},
                      {"client", source},
                      {"id", a.id},
                      {"node", a.node},
                      {"reason", reason}});
  lostTotal.Add({{"job", job.spec.id}}).Increment();
}

Result<nlohmann::json> Controller::State::admit(const nlohmann::json& body) {
  std::string id, node, source, ceId;
  uint32_t round = 0;
  uint64_t numExamples = 0;
  try {
    id = body.at("job");
    node = body.at("node");
    source = body.at("source");
    ceId = body.at("id");
    round = body.at("round");
    numExamples = body.at("num_examples");
  } catch (const nlohmann::json::exception& e) {
    return badRequest("bad_admission", e.what());
  }
  std::lock_guard lock(mutex);
  auto reject = [&](Error e) {
    rejectedTotal.Add({{"reason", e.code}}).Increment();
    return e;
  };
  LIFL_TRY(job, find(id));
  if (!job->active())
    return reject(conflict("job_finished", "job " + id + " is no longer taking updates"));
  const std::string key = acceptKey(source, ceId);
  for (auto* set : {&job->admitted, &job->next})
    if (auto a = set->find(source); a != set->end()) {
      if (a->second.id == ceId)  // a retry, maybe through another gateway: counted once
        return nlohmann::json{{"round", set == &job->next ? job->round + 1 : job->round},
                              {"duplicate", true},
                              {"node", a->second.node}};
      return reject(conflict("duplicate_client",
                             "client " + source + " already sent a different update this round"));
    }
  if (job->round > 0 && job->acceptedBefore.count(key))
    return nlohmann::json{{"round", job->round - 1}, {"duplicate", true}};
  if (round > job->round)
    return reject(conflict("wrong_round", "update is for round " + std::to_string(round) +
                                              " but job " + id + " is at round " +
                                              std::to_string(job->round)));
  if (!job->nodeUrls.count(node))
    return reject(unavailable("node_not_in_round",
                              "node " + node + " joined after round " + std::to_string(job->round) +
                                  " was planned; push to another gateway or retry later"));
  const bool late = round < job->round || job->closing;
  if (late && job->spec.late == LatePolicy::Drop) {
    job->lateDropped++;
    return reject(conflict("late_update", "round " + std::to_string(round) +
                                              " has closed; this job drops late updates"));
  }
  if (late) {  // folded into the next round (late: next_round)
    if (job->next.size() >= job->spec.clientsPerRound)
      return reject(conflict("round_full", "the next round has all its updates"));
    job->next[source] = {ceId, node, numExamples};
    journal(*job, job->round + 1, source, job->next[source]);
    admittedTotal.Add({{"job", id}}).Increment();
    return nlohmann::json{{"round", job->round + 1}, {"duplicate", false}};
  }
  if (job->admitted.size() >= job->spec.clientsPerRound)
    return reject(
        conflict("round_full", "round " + std::to_string(job->round) + " has all its updates"));
  job->admitted[source] = {ceId, node, numExamples};
  journal(*job, job->round, source, job->admitted[source]);
  admittedTotal.Add({{"job", id}}).Increment();
  if (!job->firstAdmission) job->firstAdmission = Clock::now();
  const uint32_t admittedRound = job->round;
  if (job->admitted.size() == job->spec.clientsPerRound) closeRound(*job, false);
  return nlohmann::json{{"round", admittedRound}, {"duplicate", false}};
}

void Controller::State::closeRound(ClusterJob& job, bool byDeadline) {
  job.closing = true;
  job.closedAt = Clock::now();
  job.closedByDeadline = byDeadline;
  LIFL_INFO("job " << job.spec.id << ": round " << job.round << " closes with "
                   << job.admitted.size() << " updates" << (byDeadline ? " at its deadline" : ""));
  for (const auto& [node, _] : job.nodeUrls) sendClose(job, node);
}

Result<void> Controller::State::partialForwarded(const nlohmann::json& body) {
  std::lock_guard lock(mutex);
  LIFL_TRY(job, find(body.value("job", "")));
  if (body.value("round", 0u) == job->round && body.value("epoch", 0u) == job->epoch)
    job->forwarded.insert(body.value("node", ""));
  return success();
}

Result<void> Controller::State::roundCompleted(const nlohmann::json& body) {
  std::lock_guard lock(mutex);
  LIFL_TRY(job, find(body.value("job", "")));
  const uint32_t round = body.value("round", 0u), epoch = body.value("epoch", 0u);
  if (!job->active() || round != job->round || epoch != job->epoch)
    return success();  // a repeated or stale report
  // The root has every update of the round before this controller has closed it: possible
  // only around a restart, while admissions are still being replayed. Answered 503 so that
  // the agent reports again (it drops a report answered below 500, and the round would wait
  // for ever).
  if (!job->closing)
    return unavailable("round_open", "round " + std::to_string(round) + " of job " + job->spec.id +
                                         " is not closed here yet; retry");
  const double seconds = job->firstAdmission ? secondsSince(*job->firstAdmission) : 0;
  job->history.push_back({{"round", job->round},
                          {"clients", body.value("clients", 0u)},
                          {"weight", body.value("weight", 0.0)},
                          {"seconds", seconds},
                          {"closed", job->closedByDeadline ? "deadline" : "complete"},
                          {"root", job->plan.root},
                          {"nodes", job->nodeUrls.size()},
                          {"cross_node_edges", job->plan.crossNodeEdges},
                          {"epoch", job->epoch}});
  roundsTotal.Add({{"job", job->spec.id}}).Increment();
  roundSeconds
      .Add({{"job", job->spec.id}},
           prometheus::Histogram::BucketBoundaries{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300})
      .Observe(seconds);
  job->arrivals.clear();
  for (const auto& [_, a] : job->admitted) job->arrivals[a.node] += 1;
  job->acceptedBefore.clear();
  for (const auto& [source, a] : job->admitted) job->acceptedBefore.insert(acceptKey(source, a.id));
  job->admitted.clear();
  job->round++;
  job->epoch = 0;
  job->modelSource = body.value("url", "");
  job->hasModel = false;
  LIFL_INFO("job " << job->spec.id << ": round " << job->round << " of " << job->spec.rounds
                   << " done (" << body.value("clients", 0u) << " updates, " << seconds << " s)");
  toCopy.push_back({job->spec.id, job->round, job->modelSource});
  wake.notify_all();
  if (job->round >= job->spec.rounds) {
    finishJob(*job, "done");
    return success();
  }
  if (auto started = startRound(*job); !started) finishJob(*job, "failed", started.error().detail);
  return success();
}

void Controller::State::finishJob(ClusterJob& job, std::string state, std::string failure) {
  job.state = std::move(state);
  job.failure = std::move(failure);
  if (!job.failure.empty()) LIFL_ERROR("job " << job.spec.id << ": " << job.failure);
  persist(job);
  for (const auto& [node, _] : job.nodeUrls) sendJob(job, node);
}

void Controller::State::checkDeadline(ClusterJob& job, Clock::time_point now) {
  if (!job.active()) return;
  if (job.closing) {  // a round never hangs: its aggregation gets one more deadline period
    if (std::chrono::duration<double>(now - job.closedAt).count() >= job.spec.deadlineSeconds)
      finishJob(job, "failed",
                "round " + std::to_string(job.round) +
                    " closed but its model did not come within " +
                    std::to_string(job.spec.deadlineSeconds) + " s");
    return;
  }
  if (std::chrono::duration<double>(now - job.roundOpened).count() < job.spec.deadlineSeconds)
    return;
  const auto have = static_cast<uint32_t>(job.admitted.size());
  if (have > 0 && have >= job.spec.requiredClients()) return closeRound(job, true);
  finishJob(job, "failed",
            "round " + std::to_string(job.round) + " reached its deadline of " +
                std::to_string(job.spec.deadlineSeconds) + " s with " + std::to_string(have) +
                " of the " + std::to_string(job.spec.requiredClients()) + " updates it needs");
}

Result<void> Controller::State::cancelJob(const std::string& id) {
  std::lock_guard lock(mutex);
  LIFL_TRY(job, find(id));
  if (job->active()) finishJob(*job, "cancelled");
  return success();
}

nlohmann::json Controller::State::listJobs() const {
  std::lock_guard lock(mutex);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [id, job] : jobs) {
    const std::string state =
        job->active() ? (job->admitted.empty() ? "waiting" : "aggregating") : job->state;
    out.push_back({{"id", id}, {"round", job->round}, {"state", state}});
  }
  return out;
}

Result<nlohmann::json> Controller::State::jobStatus(const std::string& id) const {
  std::lock_guard lock(mutex);
  LIFL_TRY(job, find(id));
  const std::string state =
      job->active() ? (job->admitted.empty() ? "waiting" : "aggregating") : job->state;
  nlohmann::json perNode = nlohmann::json::object();
  for (const auto& [node, _] : job->nodeUrls) perNode[node] = 0;
  for (const auto& [_, a] : job->admitted) perNode[a.node] = perNode.value(a.node, 0) + 1;
  nlohmann::json out = {
      {"id", id},
      {"state", state},
      {"round", job->round},
      {"rounds", job->spec.rounds},
      {"received", job->admitted.size()},
      {"received_by_node", perNode},
      {"expected", job->spec.clientsPerRound},
      {"strategy", job->spec.strategy.name()},
      {"update", job->spec.update == UpdateMode::Delta ? "delta" : "weights"},
      {"plan", job->plan.toJson()},
      {"epoch", job->epoch},
      {"closing", job->closing},
      {"history", job->history},
      {"lost", job->lost},
      {"late",
       {{"dropped", job->lateDropped}, {"folded", job->lateFolded}, {"waiting", job->next.size()}}},
      {"has_model",
       job->hasModel || !job->modelSource.empty() || job->spec.init != ModelInit::None},
      {"checkpoint", job->hasModel},
      {"spec", job->spec.toJson()}};
  if (!job->failure.empty()) out["failure"] = job->failure;
  return out;
}

}  // namespace lifl::control
