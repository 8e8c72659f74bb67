// The node registry: agents register with their gateway URL and capacity, send heartbeats,
// and are drained when they miss them; a drained node's share of every running round is
// re-planned (controller_jobs.cc).
#include "controller_state.h"
#include "lifl/common/log.h"

namespace lifl::control {

Result<std::unique_ptr<HttpClient>> Controller::State::connectToNode(const std::string& url) const {
  LIFL_TRY(client, HttpClient::connect(url, config.commandTimeoutSeconds, nodeTls()));
  client->setBearer(access->clusterToken());
  return client;
}

std::shared_ptr<NodeCommands> Controller::State::commandsFor(const std::string& name,
                                                             const std::string& url) const {
  return std::make_shared<NodeCommands>(name, url, config.commandTimeoutSeconds,
                                        access->clusterToken(), nodeTls());
}

Result<nlohmann::json> Controller::State::registerNode(const nlohmann::json& body) {
  std::string name, url;
  uint32_t slots = 0;
  try {
    name = body.at("name").get<std::string>();
    url = body.at("url").get<std::string>();
    slots = body.value("slots", 16u);
  } catch (const nlohmann::json::exception& e) {
    return badRequest("bad_node", std::string("node registration needs name and url: ") + e.what());
  }
  if (name.empty() || name.size() > 63 || name.find('/') != std::string::npos)
    return badRequest("bad_node", "node names are 1-63 characters without '/'");
  if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0)
    return badRequest("bad_node", "url must be http://host:port or https://host:port");
  std::lock_guard lock(mutex);
  auto& n = nodes[name];
  const bool known = !n.name.empty() && n.live;
  const bool moved = n.url != url;
  n.name = name;
  n.url = url;
  n.slots = slots;
  n.live = true;
  n.lastSeen = Clock::now();
  if (!n.commands || moved) {
    if (n.commands) retiredCommands.push_back(std::move(n.commands));
    n.commands = commandsFor(name, url);
  }
  LIFL_INFO("node " << name << (known ? " re-registered" : " registered") << ": " << url << ", "
                    << slots << " slots");
  syncNode(name);
  nlohmann::json reply = {{"name", name}, {"heartbeat_seconds", config.heartbeatSeconds}};
  if (access->enabled()) reply["public_key"] = access->publicKey();  // for client tokens
  return reply;
}

Result<nlohmann::json> Controller::State::heartbeat(const std::string& name,
                                                    const nlohmann::json& body) {
  std::lock_guard lock(mutex);
  auto it = nodes.find(name);
  if (it == nodes.end() || !it->second.live)
    return notFound("unknown_node", "node " + name + " is not registered; register again");
  it->second.lastSeen = Clock::now();
  it->second.stats = body;
  return nlohmann::json{{"models", modelRoutes()}};
}

nlohmann::json Controller::State::modelRoutes() const {
  nlohmann::json routes = nlohmann::json::object();
  for (const auto& [name, n] : nodes) {
    if (!n.live || !n.stats.contains("models") || !n.stats["models"].is_array()) continue;
    for (const auto& m : n.stats["models"]) {
      if (!m.is_object() || !m.contains("name") || !m["name"].is_string()) continue;
      const auto role = m.find("role");
      routes[m["name"].get<std::string>()].push_back(
          {{"node", name},
           {"url", n.url},
           {"role", role != m.end() && role->is_string() ? role->get<std::string>() : "both"},
           {"in_flight", m.value("in_flight", 0u)}});
    }
  }
  return routes;
}

nlohmann::json Controller::State::listModels() const {
  std::lock_guard lock(mutex);
  nlohmann::json data = nlohmann::json::array();
  const nlohmann::json routes = modelRoutes();
  for (const auto& [model, nodes] : routes.items())
    data.push_back({{"id", model}, {"object", "model"}, {"owned_by", "lifl"}, {"nodes", nodes}});
  return {{"object", "list"}, {"data", data}};
}

nlohmann::json Controller::State::listNodes() const {
  std::lock_guard lock(mutex);
  nlohmann::json out = nlohmann::json::array();
  const auto now = Clock::now();
  for (const auto& [name, n] : nodes)
    out.push_back(
        {{"name", name},
         {"url", n.url},
         {"slots", n.slots},
         {"state", n.live ? "live" : "lost"},
         {"seconds_since_heartbeat", std::chrono::duration<double>(now - n.lastSeen).count()},
         {"stats", n.stats}});
  return out;
}

std::vector<NodeLoad> Controller::State::liveNodes() const {
  std::vector<NodeLoad> out;
  for (const auto& [name, n] : nodes)
    if (n.live) out.push_back({name, n.slots, 0});
  return out;
}

void Controller::State::command(const std::string& node, std::string method, std::string target,
                                const nlohmann::json& body) {
  auto it = nodes.find(node);
  if (it == nodes.end() || !it->second.live || !it->second.commands) return;
  it->second.commands->send(std::move(method), std::move(target), body.dump());
}

// A node that (re-)registered gets the state of every job it takes part in. Agents apply it
// idempotently, so this also repairs a node that missed a command.
void Controller::State::syncNode(const std::string& name) {
  for (auto& [_, job] : jobs) {
    if (!job->nodeUrls.count(name)) continue;
    job->nodeUrls[name] = nodes[name].url;
    sendJob(*job, name);
    if (job->closing) sendClose(*job, name);
  }
}

// The round's root was lost: the updates it admitted are gone (reported), the others stay
// on their nodes. A live node becomes the root (a new epoch); every node keeps its subtree and
// sends its partial (again, if the lost root had it) to the new root.
void Controller::State::rerootRound(ClusterJob& job, const std::string& lost,
                                    const std::string& reason) {
  job.nodeUrls.erase(lost);
  for (auto a = job.admitted.begin(); a != job.admitted.end();) {
    if (a->second.node != lost) {
      ++a;
      continue;
    }
    recordLost(job, a->first, a->second, reason + ", the round's root");
    a = job.admitted.erase(a);
  }
  if (job.nodeUrls.empty()) {
    finishJob(job, "failed", "round " + std::to_string(job.round) + " lost its last node");
    return;
  }
  std::vector<NodeLoad> loads;  // the new root: the node that admitted the most
  for (const auto& [node, _] : job.nodeUrls) loads.push_back({node, nodes[node].slots, 0});
  for (auto& l : loads)
    for (const auto& [_, a] : job.admitted) l.arrivals += a.node == l.node;
  job.plan = planCluster(job.spec.clientsPerRound, job.spec.fanIn, loads);
  job.epoch++;
  job.forwarded.clear();
  LIFL_WARN("job " << job.spec.id << ": round " << job.round << " re-rooted on " << job.plan.root
                   << " (epoch " << job.epoch << "), " << job.admitted.size()
                   << " updates kept on the live nodes");
  persist(job);
  for (const auto& [node, _] : job.nodeUrls) {
    sendJob(job, node, /*reroot=*/true);
    if (job.closing) sendClose(job, node);
  }
  if (job.closing && job.admitted.empty())
    finishJob(job, "failed", "round " + std::to_string(job.round) + " lost all its updates");
}

void Controller::State::nodeLost(const std::string& name, const std::string& why) {
  auto it = nodes.find(name);
  if (it == nodes.end() || !it->second.live) return;
  LIFL_WARN("node " << name << " lost: " << why << "; re-planning its rounds");
  it->second.live = false;
  // Stopped by the sweeper, outside the lock: its thread may be inside a request to the node.
  if (it->second.commands) retiredCommands.push_back(std::move(it->second.commands));
  for (auto& [_, jobPtr] : jobs) {
    ClusterJob& job = *jobPtr;
    if (!job.active() || !job.nodeUrls.count(name)) continue;
    const std::string reason = "node " + name + " was lost (" + why + ")";
    for (auto a = job.next.begin(); a != job.next.end();) {  // parked there for the next round
      if (a->second.node != name) {
        ++a;
        continue;
      }
      recordLost(job, a->first, a->second, reason + " while waiting for the next round");
      a = job.next.erase(a);
    }
    if (name == job.plan.root) {
      rerootRound(job, name, reason);
      continue;
    }
    job.nodeUrls.erase(name);
    if (job.forwarded.count(name)) continue;  // its partial is at the root: nothing lost
    for (auto a = job.admitted.begin(); a != job.admitted.end();) {
      if (a->second.node != name) {
        ++a;
        continue;
      }
      recordLost(job, a->first, a->second, reason + " before its partial was forwarded");
      a = job.admitted.erase(a);
    }
    if (job.closing) {
      if (job.admitted.empty()) {
        finishJob(job, "failed", "round " + std::to_string(job.round) + " lost all its updates");
        continue;
      }
      for (const auto& [node, _] : job.nodeUrls) sendClose(job, node);  // the new total
    }
    persist(job);
  }
}

}  // namespace lifl::control
