#include "lifl/dataplane/cluster_link.h"

#include "lifl/common/log.h"

namespace lifl::dataplane {

ClusterLink::ClusterLink(ClusterConfig config, ObjectStore& store)
    : config_(std::move(config)), store_(store) {}

ClusterLink::~ClusterLink() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto* t : {&heartbeats_, &reporter_, &transferrer_})
    if (t->joinable()) t->join();
}

bool ClusterLink::waitOrStop(double seconds) {
  std::unique_lock lock(mutex_);
  wake_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return stopping_; });
  return !stopping_;
}

void ClusterLink::start(std::function<nlohmann::json()> stats) {
  heartbeats_ = std::thread([this, stats = std::move(stats)] { runHeartbeats(stats); });
  reporter_ = std::thread([this] { runReports(); });
  transferrer_ = std::thread([this] { runTransfers(); });
}

std::unique_ptr<HttpClient> ClusterLink::takeClient() {
  {
    std::lock_guard lock(mutex_);
    if (!pool_.empty()) {
      auto c = std::move(pool_.back());
      pool_.pop_back();
      return c;
    }
  }
  auto c = connect(config_.controller);
  return c ? std::move(c).value() : nullptr;
}

Result<std::unique_ptr<HttpClient>> ClusterLink::connect(const std::string& url) const {
  LIFL_TRY(client, HttpClient::connect(url, config_.requestTimeoutSeconds, config_.tls));
  client->setBearer(config_.clusterToken);
  return client;
}

void ClusterLink::giveBack(std::unique_ptr<HttpClient> client) {
  std::lock_guard lock(mutex_);
  if (client && pool_.size() < 8) pool_.push_back(std::move(client));
}

Result<HttpResponse> ClusterLink::toController(std::string_view method, const std::string& target,
                                               const std::string& body,
                                               const std::string& contentType,
                                               std::optional<std::string_view> authorization) {
  auto client = takeClient();
  if (!client)
    return unavailable("controller_unavailable",
                       "the controller at " + config_.controller + " cannot be reached");
  HeaderList headers;
  if (!contentType.empty()) headers.emplace_back("Content-Type", contentType);
  if (authorization) headers.emplace_back("Authorization", std::string(*authorization));
  auto r = client->request(method, target, headers, body.data(), body.size());
  if (!r)
    return unavailable("controller_unavailable",
                       "the controller at " + config_.controller + " did not answer");
  giveBack(std::move(client));
  return r;
}

Result<ClusterAdmission> ClusterLink::admit(const std::string& job, uint32_t round,
                                            const std::string& source, const std::string& id,
                                            uint64_t numExamples) {
  const nlohmann::json body = {{"job", job},     {"node", config_.nodeName},
                               {"round", round}, {"source", source},
                               {"id", id},       {"num_examples", numExamples}};
  LIFL_TRY(r, toController("POST", "/v1/cluster/admissions", body.dump(), "application/json"));
  if (r.status != 200) return errorOf(r);
  auto doc = nlohmann::json::parse(r.body, nullptr, false);
  if (!doc.is_object())
    return unavailable("controller_unavailable", "the controller's admission is not JSON");
  return ClusterAdmission{doc.value("round", 0u), doc.value("duplicate", false)};
}

void ClusterLink::runHeartbeats(std::function<nlohmann::json()> stats) {
  bool registered = false;
  double interval = 1;
  do {
    if (!registered) {
      const nlohmann::json body = {
          {"name", config_.nodeName}, {"url", config_.advertiseUrl}, {"slots", config_.slots}};
      auto r = toController("POST", "/v1/nodes", body.dump(), "application/json");
      if (r && r.value().status == 200) {
        auto doc = nlohmann::json::parse(r.value().body, nullptr, false);
        if (doc.is_object()) interval = doc.value("heartbeat_seconds", 1.0);
        if (doc.is_object() && doc.contains("public_key") && doc["public_key"].is_string() &&
            config_.onPublicKey)
          config_.onPublicKey(doc["public_key"].get<std::string>());
        registered = true;
        LIFL_INFO("registered with the controller " << config_.controller << " as "
                                                    << config_.nodeName);
      } else {
        LIFL_DEBUG("registration with " << config_.controller << " failed; retrying");
      }
      continue;
    }
    nlohmann::json body = stats();
    body["cross_node_bytes_sent"] = sent_.load();
    body["cross_node_bytes_received"] = received_.load();
    body["cross_node_partials_sent"] = partialsSent_.load();
    auto r = toController("POST", "/v1/nodes/" + config_.nodeName + "/heartbeat", body.dump(),
                          "application/json");
    if (r && r.value().status == 404) {  // the controller restarted or drained us
      LIFL_WARN("the controller does not know this node any more; registering again");
      registered = false;
      continue;
    }
    if (r && r.value().status == 200)
      takeModelRoutes(nlohmann::json::parse(r.value().body, nullptr, false));
  } while (waitOrStop(registered ? interval : 0.2));
}

void ClusterLink::takeModelRoutes(const nlohmann::json& answer) {
  std::map<std::string, std::vector<ModelRoute>> routes;
  if (answer.is_object() && answer.contains("models") && answer["models"].is_object())
    for (const auto& [model, nodes] : answer["models"].items()) {
      if (!nodes.is_array()) continue;
      for (const auto& n : nodes) {
        if (!n.is_object() || !n.contains("node") || !n.contains("url")) continue;
        if (!n["node"].is_string() || !n["url"].is_string()) continue;
        if (n["node"].get<std::string>() == config_.nodeName) continue;
        const auto role = n.find("role");
        routes[model].push_back(
            {model, n["node"].get<std::string>(), n["url"].get<std::string>(),
             n.value("in_flight", 0u),
             role != n.end() && role->is_string() ? role->get<std::string>() : "both"});
      }
    }
  std::lock_guard lock(mutex_);
  modelRoutes_ = std::move(routes);
}

std::vector<ModelRoute> ClusterLink::modelRoutes(const std::string& model) const {
  std::lock_guard lock(mutex_);
  if (!model.empty()) {
    auto it = modelRoutes_.find(model);
    return it == modelRoutes_.end() ? std::vector<ModelRoute>{} : it->second;
  }
  std::vector<ModelRoute> any;
  for (const auto& [_, nodes] : modelRoutes_) any.insert(any.end(), nodes.begin(), nodes.end());
  return any;
}

void ClusterLink::report(const std::string& path, nlohmann::json body) {
  {
    std::lock_guard lock(mutex_);
    reports_.emplace_back(path, std::move(body));
  }
  wake_.notify_all();
}

void ClusterLink::runReports() {
  for (;;) {
    std::pair<std::string, nlohmann::json> next;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !reports_.empty(); });
      if (stopping_) return;
      next = reports_.front();
    }
    auto r = toController("POST", next.first, next.second.dump(), "application/json");
    if (r && r.value().status < 500) {
      if (r.value().status >= 400)
        LIFL_WARN("controller refused " << next.first << ": " << errorOf(r.value()).toString());
      std::lock_guard lock(mutex_);
      reports_.pop_front();
      continue;
    }
    if (!waitOrStop(0.2)) return;  // the controller is down or restarting: keep it for later
  }
}

void ClusterLink::forward(PartialTransfer transfer) {
  {
    std::lock_guard lock(mutex_);
    transfers_.push_back(std::move(transfer));
  }
  wake_.notify_all();
}

bool ClusterLink::sendPartial(const PartialTransfer& t, const PartialTarget& to, bool relay) {
  auto object = store_.resolve(t.partial);
  if (!object) return false;
  auto client = connect(relay ? config_.controller : to.rootUrl);
  if (!client) return false;
  std::string target = std::string(relay ? "/v1/cluster/relay/jobs/" : "/v1/cluster/jobs/") +
                       t.job + "/partials?round=" + std::to_string(t.round) +
                       "&epoch=" + std::to_string(to.epoch) + "&from=" + config_.nodeName +
                       "&partial=" + std::to_string(t.partial.generation);
  if (relay) target += "&root=" + to.rootUrl;
  // The body goes from the store to the socket; the receiver reads it into its own store.
  auto r = client.value()->request("POST", target, {{"Content-Type", "application/octet-stream"}},
                                   object.value().data(), object.value().size());
  if (!r || r.value().status >= 300) {
    LIFL_WARN("partial of job " << t.job << " to " << to.rootUrl << ": "
                                << (r ? errorOf(r.value()).toString() : r.error().toString()));
    return false;
  }
  sent_ += object.value().size();
  partialsSent_++;
  return true;
}

void ClusterLink::runTransfers() {
  for (;;) {
    PartialTransfer t;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !transfers_.empty(); });
      if (stopping_) return;
      t = std::move(transfers_.front());
      transfers_.pop_front();
    }
    // Retried while the round wants it, to wherever its root is now: a root that stays
    // unreachable is drained by the controller, which re-roots the round on a live node.
    // From the second failed attempt on, every other attempt goes through the controller:
    // the root may be alive but out of this node's reach (a cut link between two nodes).
    std::optional<uint32_t> delivered;
    uint32_t attempt = 0;
    for (auto to = t.target(); to; to = t.target(), ++attempt) {
      const bool relay = attempt >= 2 && attempt % 2 == 0;
      if (sendPartial(t, *to, relay)) {
        if (relay) LIFL_WARN("partial of job " << t.job << " relayed through the controller");
        delivered = to->epoch;
        break;
      }
      if (!waitOrStop(0.25)) break;
    }
    t.done(delivered);
  }
}

Result<std::pair<std::string, uint32_t>> ClusterLink::fetchModel(const std::string& url,
                                                                 const std::string& job) {
  LIFL_TRY(client, connect(url));
  LIFL_TRY(r, client->get("/v1/jobs/" + job + "/model"));
  if (r.status != 200) return errorOf(r);
  received_ += r.body.size();
  const auto round =
      static_cast<uint32_t>(std::strtoul(r.header("lifl-round").c_str(), nullptr, 10));
  return std::make_pair(std::move(r.body), round);
}

}  // namespace lifl::dataplane
