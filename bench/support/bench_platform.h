// A `lifl up` process under test, started in a temporary data dir on a free port, with the
// platform's CPU and memory read from /proc (agent + every function instance).
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "lifl/common/http_client.h"
#include "lifl/common/safetensors_header.h"

namespace lifl::bench {

/// A safetensors update body of `params` random F32 values in one tensor "w".
inline std::vector<char> randomUpdateBody(size_t params, unsigned seed) {
  std::vector<TensorSpec> tensors = {{"w", {static_cast<int64_t>(params)}, params}};
  const std::string header = f32SafetensorsHeader(tensors);
  std::vector<char> body(header.size() + params * 4);
  std::memcpy(body.data(), header.data(), header.size());
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1, 1);
  auto* v = reinterpret_cast<float*>(body.data() + header.size());
  for (size_t i = 0; i < params; ++i) v[i] = d(rng);
  return body;
}

/// kB of a /proc/<pid>/status field (e.g. "RssAnon"), 0 if absent.
inline uint64_t statusKb(pid_t pid, const std::string& field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field + ":", 0) == 0) return std::stoull(line.substr(field.size() + 1));
  return 0;
}

class PlatformProcess {
 public:
  /// Starts `lifl up`; LIFL_BENCH_CONFIG names an agent config (the store size is still the
  /// benchmark's). `extra`: more flags of `lifl up` (--auth, say).
  PlatformProcess(const std::string& lifl, uint64_t storeBytes,
                  const std::vector<std::string>& extra = {})
      : dir_("/tmp/lifl-bench-" + std::to_string(getpid()) + "-" + std::to_string(counter()++)) {
    std::filesystem::create_directories(dir_);
    const std::string portFile = dir_ + "/port";
    std::vector<std::string> args = {
        "lifl",        "up",     "--port",        "0",
        "--port-file", portFile, "--store-bytes", std::to_string(storeBytes),
        "--warm-pool", "8",      "--data-dir",    dir_};
    if (const char* config = std::getenv("LIFL_BENCH_CONFIG")) {
      args.push_back("--config");
      args.push_back(config);
    }
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(lifl.c_str(), argv.data());
      _exit(127);
    }
    for (int i = 0; i < 500 && url_.empty(); ++i) {
      std::ifstream f(portFile);
      int port = 0;
      if (f >> port && port > 0)
        url_ = "http://127.0.0.1:" + std::to_string(port);
      else
        ::usleep(20000);
    }
  }
  ~PlatformProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }
  PlatformProcess(const PlatformProcess&) = delete;
  PlatformProcess& operator=(const PlatformProcess&) = delete;

  const std::string& url() const { return url_; }
  const std::string& dataDir() const { return dir_; }
  bool up() const { return !url_.empty(); }

  /// The agent and every function instance.
  std::vector<pid_t> pids(HttpClient& c) const {
    std::vector<pid_t> out{pid_};
    auto r = c.get("/v1/instances");
    if (r && r.value().status == 200)
      for (const auto& i : nlohmann::json::parse(r.value().body))
        out.push_back(i["pid"].get<pid_t>());
    return out;
  }
  double cpu(HttpClient& c) const {
    double total = 0;
    for (pid_t p : pids(c)) total += pidCpu(p);
    return total;
  }
  struct Memory {
    uint64_t storeBytes = 0;    ///< the store's live objects (shared pages, counted once)
    uint64_t privateBytes = 0;  ///< private (anonymous) RSS of every process
    uint32_t processes = 0;
    uint64_t total() const { return storeBytes + privateBytes; }
  };
  /// Private memory of every process plus the store's live objects: shared store pages are
  /// counted once, through the store, not once per process that maps them.
  Memory memory(HttpClient& c) const {
    Memory m;
    for (pid_t p : pids(c)) {
      m.privateBytes += statusKb(p, "RssAnon") * 1024;
      m.processes++;
    }
    auto metrics = c.get("/metrics");
    if (metrics && metrics.value().status == 200) {
      std::istringstream lines(metrics.value().body);
      std::string line;
      while (std::getline(lines, line))
        if (line.rfind("lifl_store_bytes{state=\"live\"}", 0) == 0)
          m.storeBytes += static_cast<uint64_t>(std::stod(line.substr(line.rfind(' ') + 1)));
    }
    return m;
  }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::string dir_;
  pid_t pid_ = -1;
  std::string url_;
};

}  // namespace lifl::bench
