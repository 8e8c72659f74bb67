// The controller's durable state, so that `lifl controller` can be killed and restarted
// mid-job: per job, job.json (spec, round, plan, history, losses) rewritten atomically on
// every change, a journal of the round's admissions appended before each is answered, and
// the global model of every completed round copied from the node that produced it.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "controller_state.h"
#include "lifl/common/http_client.h"
#include "lifl/common/log.h"

namespace lifl::control {

namespace fs = std::filesystem;

namespace {
std::string jobDir(const std::string& dataDir, const std::string& id) {
  return dataDir + "/jobs/" + id;
}

bool writeAtomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) return false;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  return !ec;
}
}  // namespace

std::string Controller::State::modelPath(const std::string& id, uint32_t round) const {
  return jobDir(config.dataDir, id) + "/model-" + std::to_string(round) + ".safetensors";
}

void Controller::State::persist(const ClusterJob& job) const {
  std::error_code ec;
  fs::create_directories(jobDir(config.dataDir, job.spec.id), ec);
  nlohmann::json j = {{"spec", job.spec.toJson()},
                      {"state", job.state},
                      {"round", job.round},
                      {"epoch", job.epoch},
                      {"root", job.plan.root},
                      {"shares", job.plan.shares},
                      {"node_urls", job.nodeUrls},
                      {"arrivals", job.arrivals},
                      {"accepted_before", job.acceptedBefore},
                      {"closing", job.closing},
                      {"closed_by_deadline", job.closedByDeadline},
                      {"history", job.history},
                      {"lost", job.lost},
                      {"late_dropped", job.lateDropped},
                      {"late_folded", job.lateFolded},
                      {"has_model", job.hasModel},
                      {"model_source", job.modelSource},
                      {"failure", job.failure}};
  const std::string path = jobDir(config.dataDir, job.spec.id) + "/job.json";
  if (!writeAtomically(path, j.dump())) LIFL_ERROR("cannot write " << path);
}

void Controller::State::journal(const ClusterJob& job, uint32_t round, const std::string& source,
                                const Admitted& a) const {
  const std::string path =
      jobDir(config.dataDir, job.spec.id) + "/admitted-" + std::to_string(round) + ".log";
  std::ofstream out(path, std::ios::app);
  out << nlohmann::json{{"source", source},
                        {"id", a.id},
                        {"node", a.node},
                        {"n", a.numExamples},
                        {"epoch", job.epoch}}
             .dump()
      << '\n';
  if (!out) LIFL_ERROR("cannot append to " << path);
}

void Controller::State::restore() {
  std::error_code ec;
  const fs::path root = config.dataDir + "/jobs";
  if (!fs::is_directory(root, ec)) return;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string file = entry.path().string() + "/job.json";
    std::ifstream in(file);
    if (!in) continue;
    try {
      std::stringstream text;
      text << in.rdbuf();
      const auto j = nlohmann::json::parse(text.str());
      auto spec = jobSpecFromJson(j.at("spec"));
      if (!spec) throw std::runtime_error(spec.error().detail);
      auto job = std::make_unique<ClusterJob>();
      job->spec = std::move(spec).value();
      job->state = j.at("state");
      job->round = j.at("round");
      job->epoch = j.at("epoch");
      job->plan.root = j.at("root");
      job->plan.shares = j.at("shares").get<std::map<std::string, uint32_t>>();
      job->nodeUrls = j.at("node_urls").get<std::map<std::string, std::string>>();
      job->arrivals = j.at("arrivals").get<std::map<std::string, double>>();
      job->acceptedBefore = j.at("accepted_before").get<std::set<std::string>>();
      job->closing = j.at("closing");
      job->closedByDeadline = j.at("closed_by_deadline");
      job->history = j.at("history");
      job->lost = j.at("lost");
      job->lateDropped = j.at("late_dropped");
      job->lateFolded = j.at("late_folded");
      job->hasModel = j.at("has_model");
      job->modelSource = j.at("model_source");
      job->failure = j.at("failure");
      // The round's admissions, less those declared lost since.
      std::set<std::string> lost;
      for (const auto& l : job->lost)
        if (l.value("round", 0u) == job->round) lost.insert(l.value("client", ""));
      for (uint32_t r : {job->round, job->round + 1}) {
        std::ifstream log(jobDir(config.dataDir, job->spec.id) + "/admitted-" + std::to_string(r) +
                          ".log");
        std::string line;
        while (std::getline(log, line)) {
          auto e = nlohmann::json::parse(line, nullptr, false);
          if (!e.is_object()) continue;  // a line torn by a crash
          const std::string source = e.value("source", "");
          if (r == job->round && (e.value("epoch", 0u) != job->epoch || lost.count(source)))
            continue;
          (r == job->round ? job->admitted : job->next)[source] = {
              e.value("id", ""), e.value("node", ""), e.value("n", uint64_t{1})};
        }
      }
      job->roundOpened = job->closedAt = Clock::now();  // deadlines count again from here
      // Killed between the admission that filled the round and the round's close: close it
      // now (the nodes are told below), or it would wait for updates that cannot come.
      if (job->active() && !job->closing && job->admitted.size() >= job->spec.clientsPerRound)
        job->closing = true;
      // Killed after the round completed but before its model was copied: copy it again.
      if (!job->hasModel && job->round > 0 && !job->modelSource.empty())
        toCopy.push_back({job->spec.id, job->round, job->modelSource});
      if (!job->admitted.empty()) job->firstAdmission = job->roundOpened;
      // The plan's tree shape is re-derived for status; the nodes keep running theirs.
      std::vector<NodeLoad> loads;
      for (const auto& [name, share] : job->plan.shares) loads.push_back({name, 1, double(share)});
      if (!loads.empty()) {
        const std::string savedRoot = job->plan.root;
        auto shares = job->plan.shares;
        job->plan = planCluster(job->spec.clientsPerRound, job->spec.fanIn, loads);
        job->plan.root = savedRoot;
        job->plan.shares = shares;
      }
      // The round's nodes are expected back: they get the job's state when they register,
      // and are drained like any other node if they do not within the heartbeat timeout.
      for (const auto& [name, url] : job->nodeUrls) {
        auto& n = nodes[name];
        if (!n.name.empty()) continue;
        n.name = name;
        n.url = url;
        n.live = true;
        n.lastSeen = Clock::now();
        n.commands = commandsFor(name, url);
      }
      LIFL_INFO("restored job " << job->spec.id << " at round " << job->round << " (" << job->state
                                << ", " << job->admitted.size() << " updates admitted)");
      jobs[job->spec.id] = std::move(job);
    } catch (const std::exception& e) {
      LIFL_ERROR("cannot restore " << file << ": " << e.what());
    }
  }
  for (auto& [_, job] : jobs)
    if (job->active())
      for (const auto& [name, _] : job->nodeUrls) {
        sendJob(*job, name);
        if (job->closing) sendClose(*job, name);
      }
}

void Controller::State::copyModels() {
  for (;;) {
    ModelCopy next;
    {
      std::unique_lock lock(mutex);
      wake.wait(lock, [&] { return stopping || !toCopy.empty(); });
      if (stopping) return;
      next = toCopy.front();
      toCopy.pop_front();
    }
    fetchModel(next.job, next.round, next.url);
  }
}

void Controller::State::fetchModel(const std::string& id, uint32_t round, const std::string& url) {
  // Retried while the job is at this round: the root may be busy for a moment.
  for (int attempt = 0; attempt < 50; ++attempt) {
    {
      std::unique_lock lock(mutex);
      if (stopping) return;
      if (attempt) wake.wait_for(lock, std::chrono::milliseconds(200));
      if (stopping) return;
    }
    auto client = connectToNode(url);
    if (!client) continue;
    auto got = client.value()->get("/v1/jobs/" + id + "/model");
    if (!got || got.value().status != 200) continue;
    if (got.value().header("lifl-round") != std::to_string(round)) return;  // moved on
    if (!writeAtomically(modelPath(id, round), got.value().body)) {
      LIFL_ERROR("cannot write " << modelPath(id, round));
      return;
    }
    std::lock_guard lock(mutex);
    auto job = find(id);
    if (job && job.value()->round == round) {
      job.value()->hasModel = true;
      persist(*job.value());
    }
    return;
  }
  LIFL_WARN("job " << id << ": could not copy the model of round " << round << " from " << url);
}

}  // namespace lifl::control
