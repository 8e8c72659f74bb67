// The controller's REST surface (API.md jobs API, /v1/nodes, and the /v1/cluster/ calls of
// the agents), its background sweep (heartbeats, deadlines) and its life cycle.
#include <prometheus/text_serializer.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "controller_state.h"
#include "lifl/common/http_client.h"
#include "lifl/common/log.h"

namespace lifl::control {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

namespace {
constexpr uint64_t kMaxBody = 4ull << 30;  // an initial model; everything else is small JSON

Result<nlohmann::json> parseJson(const std::string& body) {
  auto doc = nlohmann::json::parse(body, nullptr, false);
  if (doc.is_discarded()) return badRequest("malformed_json", "the body is not valid JSON");
  return doc;
}

HttpReply replyOf(const Result<nlohmann::json>& r, int status = 200) {
  return r ? HttpReply::json(status, r.value().dump()) : HttpReply::error(r.error());
}
HttpReply replyOf(const Result<void>& r, int status = 204) {
  return r ? HttpReply{status, ""} : HttpReply::error(r.error());
}
}  // namespace

Controller::State::State(ControllerConfig c)
    : config(std::move(c)),
      registry(std::make_shared<prometheus::Registry>()),
      admittedTotal(BuildCounter()
                        .Name("lifl_updates_admitted_total")
                        .Help("Client updates admitted into a round, over all gateways")
                        .Register(*registry)),
      rejectedTotal(BuildCounter()
                        .Name("lifl_updates_rejected_total")
                        .Help("Client updates the controller refused, by error code")
                        .Register(*registry)),
      lostTotal(BuildCounter()
                    .Name("lifl_updates_lost_total")
                    .Help("Accepted updates lost with a node (listed in the job status)")
                    .Register(*registry)),
      roundsTotal(BuildCounter()
                      .Name("lifl_rounds_completed_total")
                      .Help("Aggregation rounds completed across the cluster")
                      .Register(*registry)),
      roundSeconds(BuildHistogram()
                       .Name("lifl_round_duration_seconds")
                       .Help("Time from a round's first admitted update to its new model")
                       .Register(*registry)),
      nodesGauge(BuildGauge()
                     .Name("lifl_nodes")
                     .Help("Registered node agents by state")
                     .Register(*registry)),
      relayedTotal(BuildCounter()
                       .Name("lifl_partials_relayed_total")
                       .Help("Partials passed from a member to its root through the controller")
                       .Register(*registry)),
      nodeGauges(BuildGauge()
                     .Name("lifl_node_cross_node_bytes")
                     .Help("Bytes each node sent to other nodes (from its heartbeats)")
                     .Register(*registry)) {}

Controller::State::~State() {
  {
    std::lock_guard lock(mutex);
    stopping = true;
  }
  wake.notify_all();
  if (server) server->stop();
  if (sweeper.joinable()) sweeper.join();
  if (copier.joinable()) copier.join();
}

void Controller::State::sweep() {
  std::unique_lock lock(mutex);
  while (!stopping) {
    wake.wait_for(lock, std::chrono::milliseconds(100));
    if (stopping) break;
    const auto now = Clock::now();
    std::vector<std::string> silent;
    for (const auto& [name, n] : nodes)
      if (n.live &&
          std::chrono::duration<double>(now - n.lastSeen).count() > config.nodeTimeoutSeconds)
        silent.push_back(name);
    for (const auto& name : silent) nodeLost(name, "no heartbeat");
    for (auto& [_, job] : jobs) checkDeadline(*job, now);
    if (!retiredCommands.empty()) {
      auto retired = std::move(retiredCommands);
      retiredCommands.clear();
      lock.unlock();
      retired.clear();  // joins their threads (bounded by the command timeout)
      lock.lock();
    }
  }
}

HttpReply Controller::State::handle(const HttpRequest& r) {
  const auto& p = r.path;
  const std::string& m = r.method;
  auto notAllowed = [] {
    return HttpReply::error(makeError(405, "method_not_allowed", "method not allowed here"));
  };
  if (p.size() == 1 && p[0] == "livez") return HttpReply::json(200, R"({"status":"ok"})");
  if (!restored)
    return HttpReply::error(
        unavailable("restoring", "the controller is restoring its state; retry shortly"));
  if (p.size() == 1 && p[0] == "readyz") return HttpReply::json(200, R"({"status":"ok"})");
  if (p.size() == 1 && p[0] == "metrics") {
    {
      std::lock_guard lock(mutex);
      uint32_t live = 0;
      for (const auto& [name, n] : nodes) {
        live += n.live;
        if (n.stats.contains("cross_node_bytes_sent"))
          nodeGauges.Add({{"node", name}}).Set(n.stats.value("cross_node_bytes_sent", 0.0));
      }
      nodesGauge.Add({{"state", "live"}}).Set(live);
      nodesGauge.Add({{"state", "lost"}}).Set(static_cast<double>(nodes.size() - live));
    }
    return {200, prometheus::TextSerializer().Serialize(registry->Collect()),
            "text/plain; version=0.0.4"};
  }
  // Credentials (docs/security.md): the agents' calls need the cluster credential, the jobs
  // API the admin credential (or, to read a job, its client token); a member forwards its
  // clients' requests with their own credential.
  const std::string& auth = r.authorization;
  if (p.size() == 3 && p[0] == "v1" && p[1] == "tokens" && p[2] == "public-key" && m == "GET") {
    if (!access->enabled())
      return HttpReply::error(
          notFound("auth_disabled", "tokens exist only when security.auth is on"));
    return HttpReply::json(
        200, nlohmann::json{{"algorithm", "Ed25519"}, {"public_key", access->publicKey()}}.dump());
  }
  if (p.size() >= 2 && p[0] == "v1") {
    const bool nodeCall = (p[1] == "nodes" && m != "GET" && m != "DELETE") || p[1] == "cluster";
    const bool jobRead = p[1] == "jobs" && m == "GET" && p.size() >= 3;
    Result<void> allowed = success();
    if (nodeCall)
      allowed = access->requireCluster(auth);
    else if (jobRead)
      allowed = access->requireReader(auth, p[2]);
    else if (p[1] == "nodes" && m == "GET" && access->requireCluster(auth))
      allowed = success();  // `lifl status` as admin, or a node
    else
      allowed = access->requireAdmin(auth);
    if (!allowed) {
      HttpReply refused = HttpReply::error(allowed.error());
      if (allowed.error().status == 401)
        refused.headers = {{"WWW-Authenticate", "Bearer realm=\"lifl\""}};
      return refused;
    }
  }
  if (p.size() == 2 && p[0] == "v1" && p[1] == "tokens") {
    if (m != "POST") return notAllowed();
    return replyOf(access->issue(r.body), 201);
  }
  if (p.size() == 2 && p[0] == "v1" && p[1] == "models") {
    if (m != "GET") return notAllowed();
    return HttpReply::json(200, listModels().dump());
  }
  if (p.size() >= 2 && p[0] == "v1" && p[1] == "nodes") {
    if (p.size() == 2 && m == "GET") return HttpReply::json(200, listNodes().dump());
    if (p.size() == 2 && m == "POST") {
      auto body = parseJson(r.body);
      if (!body) return HttpReply::error(body.error());
      return replyOf(registerNode(body.value()));
    }
    if (p.size() == 3 && m == "DELETE") {  // drain a node by hand
      std::lock_guard lock(mutex);
      if (!nodes.count(p[2])) return HttpReply::error(notFound("unknown_node", "no node " + p[2]));
      nodeLost(p[2], "drained by request");
      return {204, ""};
    }
    if (p.size() == 4 && p[3] == "heartbeat" && m == "POST") {
      auto body = parseJson(r.body);
      if (!body) return HttpReply::error(body.error());
      return replyOf(heartbeat(p[2], body.value()));
    }
    return notAllowed();
  }
  if (p.size() >= 2 && p[0] == "v1" && p[1] == "jobs") {
    if (p.size() == 2) {
      if (m == "GET") return HttpReply::json(200, listJobs().dump());
      if (m != "POST") return notAllowed();
      auto spec = parseJobSpec(r.body, r.contentType);
      if (!spec) return HttpReply::error(spec.error());
      // The server optimisers keep their state beside the model on the node that publishes
      // it; members copy the model only, so a root that moves would start from zero state.
      // The robust rules need every update at one aggregator, and fedbuff's next buffer
      // fills while the current one aggregates, which the controller's rounds do not model.
      const auto& strategy = spec.value().strategy;
      if (strategy.serverStep() || strategy.robust() || strategy.asynchronous())
        return HttpReply::error(unprocessable(
            "invalid_job_spec", "strategy " + strategy.name() +
                                    " runs on a single node for now (lifl up or one agent)"));
      return replyOf(createJob(std::move(spec).value()), 201);
    }
    const std::string& id = p[2];
    if (p.size() == 3) {
      if (m == "GET") return replyOf(jobStatus(id));
      if (m == "DELETE") return replyOf(cancelJob(id));
      return notAllowed();
    }
    if (p.size() == 4 && p[3] == "model") {
      if (m == "PUT") return replyOf(setInitialModel(id, r.body));
      if (m != "GET") return notAllowed();
      uint32_t round = 0;
      {
        std::lock_guard lock(mutex);
        auto job = find(id);
        if (!job) return HttpReply::error(job.error());
        if (!job.value()->hasModel)
          return HttpReply::error(notFound("no_model",
                                           "the controller holds no checkpoint of "
                                           "this round's model yet; ask a gateway"));
        round = job.value()->round;
      }
      std::ifstream in(modelPath(id, round), std::ios::binary);
      std::stringstream bytes;
      bytes << in.rdbuf();
      HttpReply reply{200, bytes.str(), "application/octet-stream"};
      reply.headers = {{"ETag", "\"" + std::to_string(round) + "\""},
                       {"lifl-round", std::to_string(round)}};
      return reply;
    }
    return HttpReply::error(notFound("not_found", "no such endpoint"));
  }
  if (p.size() == 6 && p[0] == "v1" && p[1] == "cluster" && p[2] == "relay" && p[3] == "jobs" &&
      p[5] == "partials" && m == "POST")
    return relayPartial(p[4], r);
  if (p.size() == 3 && p[0] == "v1" && p[1] == "cluster" && m == "POST") {
    auto body = parseJson(r.body);
    if (!body) return HttpReply::error(body.error());
    if (p[2] == "admissions") return replyOf(admit(body.value()));
    if (p[2] == "rounds") return replyOf(roundCompleted(body.value()));
    if (p[2] == "forwarded") return replyOf(partialForwarded(body.value()));
  }
  return HttpReply::error(notFound("not_found", "no such endpoint"));
}

// A member that cannot reach the root directly (a cut link between two agents, while both
// still reach the controller) sends its partial here, and the controller passes it on. The
// root is named by its URL, which must be a live registered node's: the controller relays
// only between its own agents. The root drops a partial it already has (by its key), so a
// relay after a direct delivery whose answer was lost is harmless.
HttpReply Controller::State::relayPartial(const std::string& job, const HttpRequest& r) {
  const std::string root = queryParam(r.target, "root");
  bool known = false;
  {
    std::lock_guard lock(mutex);
    for (const auto& [name, n] : nodes) known = known || (n.live && n.url == root);
  }
  if (!known)
    return HttpReply::error(
        notFound("unknown_node", "the relay's root is not a live node of this cluster"));
  std::string target = "/v1/cluster/jobs/" + job + "/partials?";
  for (const char* key : {"round", "epoch", "from", "partial"})
    target += std::string(key) + "=" + queryParam(r.target, key) + "&";
  target.pop_back();
  auto client = connectToNode(root);  // the root's /v1/cluster/ wants the cluster credential
  if (!client) return HttpReply::error(client.error());
  auto answer = client.value()->request(
      "POST", target, {{"Content-Type", "application/octet-stream"}}, r.body.data(), r.body.size());
  if (!answer) return HttpReply::error(answer.error());
  relayedTotal.Add({}).Increment();
  LIFL_INFO("relayed a partial of job " << job << " from " << queryParam(r.target, "from") << " to "
                                        << root << ": " << answer.value().status);
  return HttpReply::json(answer.value().status, answer.value().body);
}

Controller::Controller(std::unique_ptr<State> state) : state_(std::move(state)) {}
Controller::~Controller() { stop(); }
uint16_t Controller::port() const { return state_->port; }
void Controller::stop() { state_.reset(); }

Result<std::unique_ptr<Controller>> Controller::start(ControllerConfig config) {
  std::error_code ec;
  std::filesystem::create_directories(config.dataDir + "/jobs", ec);
  if (ec) return systemError("create " + config.dataDir, ec.value());
  auto state = std::make_unique<State>(std::move(config));
  State* s = state.get();
  LIFL_TRY(access,
           AccessPolicy::create(s->config.security, s->config.dataDir, PolicyRole::Controller));
  s->access = std::move(access);
  s->server = std::make_unique<HttpServer>([s](const HttpRequest& r) { return s->handle(r); },
                                           kMaxBody, s->config.tls);
  LIFL_TRY(port, s->server->start(s->config.bind, s->config.port, s->config.threads));
  s->port = port;
  s->selfUrl = s->config.advertiseUrl.empty()
                   ? std::string(s->config.tls.enabled() ? "https://" : "http://") +
                         s->config.bind + ":" + std::to_string(port)
                   : s->config.advertiseUrl;
  {
    std::lock_guard lock(s->mutex);
    s->restore();
  }
  s->restored = true;
  s->sweeper = std::thread([s] { s->sweep(); });
  s->copier = std::thread([s] { s->copyModels(); });
  LIFL_INFO("controller ready: " << s->selfUrl << ", data dir " << s->config.dataDir);
  return std::unique_ptr<Controller>(new Controller(std::move(state)));
}

}  // namespace lifl::control
