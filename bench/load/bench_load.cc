// The load test of issue 8: one round of N simulated clients (default 10 000, with updates of
// 100 000 F32 parameters) through one gateway of a `lifl up` process, pushed over C
// concurrent keep-alive connections on loopback (each connection runs its share of the
// clients one after another: a bounded loop). Reports updates/s accepted, the p50/p99/max of
// each update's request time, errors, and the platform's CPU (agent + function instances).
// Baseline in the same run: the same bytes over C loopback TCP connections into memory, no
// HTTP. The round's model is checked against a double-precision FedAvg computed here.
//
// With --auth the platform runs `lifl up --auth`: every update carries its client's token
// (created before the timing) and the gateway verifies its Ed25519 signature.
//
//   bench_load [--clients 10000] [--params 100000] [--connections 16] [--auth]
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_platform.h"
#include "bench_util.h"
#include "lifl/common/http_client.h"
#include "lifl/common/unique_fd.h"

namespace {

using namespace lifl;
using bench::now;

constexpr int kBodies = 8;  ///< distinct updates; client c sends body c % 8 with weight 1 + c % 97

uint64_t weightOf(uint32_t client) { return 1 + client % 97; }

/// The F32 values of a safetensors body of one tensor.
std::vector<float> valuesOf(const std::vector<char>& body) {
  uint64_t header = 0;
  std::memcpy(&header, body.data(), 8);
  const size_t n = (body.size() - 8 - header) / 4;
  std::vector<float> v(n);
  std::memcpy(v.data(), body.data() + 8 + header, n * 4);
  return v;
}

double rawTcpUpdatesPerSecond(const std::vector<char>& body, int streams, int perStream) {
  return static_cast<double>(streams) * perStream / bench::rawTcpSeconds(body, streams, perStream);
}

}  // namespace

int main(int argc, char** argv) {
  uint32_t clients = 10000, connections = 16;
  size_t params = 100000;
  bool auth = false;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--auth")) auth = true;
  for (int i = 1; i + 1 < argc; ++i) {
    if (!std::strcmp(argv[i], "--clients")) clients = static_cast<uint32_t>(std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--params")) params = std::strtoull(argv[i + 1], nullptr, 10);
    if (!std::strcmp(argv[i], "--connections"))
      connections = static_cast<uint32_t>(std::atoi(argv[i + 1]));
  }
  if (clients == 0 || connections == 0 || params == 0) {
    std::fprintf(stderr, "bench_load: --clients, --params and --connections must be positive\n");
    return 1;
  }
  std::vector<std::vector<char>> bodies;
  for (int b = 0; b < kBodies; ++b) bodies.push_back(bench::randomUpdateBody(params, 100 + b));

  const double raw =
      rawTcpUpdatesPerSecond(bodies[0], static_cast<int>(connections),
                             static_cast<int>((clients + connections - 1) / connections));

  bench::PlatformProcess p(bench::liflBinary(), 4ull << 30,
                           auth ? std::vector<std::string>{"--auth"} : std::vector<std::string>{});
  if (!p.up()) {
    std::fprintf(stderr, "lifl up did not start\n");
    return 1;
  }
  auto control = HttpClient::connect(p.url());
  if (!control) {
    std::fprintf(stderr, "%s\n", control.error().toString().c_str());
    return 1;
  }
  std::vector<std::string> tokens(clients);
  if (auth) {
    std::ifstream f(p.dataDir() + "/auth/admin.token");
    std::string admin;
    f >> admin;
    control.value()->setBearer(admin);
  }
  const nlohmann::json spec = {
      {"id", "load"},
      {"model", {{"tensors", {{"w", {{"dtype", "F32"}, {"shape", {params}}}}}}, {"init", "zeros"}}},
      {"clients_per_round", clients},
      {"rounds", 1},
      {"deadline_seconds", 3600}};
  const std::string text = spec.dump();
  auto created = control.value()->request(
      "POST", "/v1/jobs", {{"Content-Type", "application/json"}}, text.data(), text.size());
  if (!created || created.value().status != 201) {
    std::fprintf(stderr, "job creation failed\n");
    return 1;
  }

  for (uint32_t c = 0; auth && c < clients; ++c) {
    const std::string request =
        nlohmann::json{{"job", "load"}, {"client", "client-" + std::to_string(c)}}.dump();
    auto r = control.value()->request("POST", "/v1/tokens", {{"Content-Type", "application/json"}},
                                      request.data(), request.size());
    if (!r || r.value().status != 201) {
      std::fprintf(stderr, "token %u failed\n", c);
      return 1;
    }
    tokens[c] = nlohmann::json::parse(r.value().body)["token"];
  }

  std::atomic<uint32_t> next{0}, errors{0};
  std::mutex latencyMutex;
  std::vector<double> latencies;
  latencies.reserve(clients);
  const double c0 = p.cpu(*control.value()), t0 = now();
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < connections; ++t) {
    threads.emplace_back([&] {
      auto http = HttpClient::connect(p.url(), 60);
      std::vector<double> mine;
      for (uint32_t c = next++; c < clients; c = next++) {  // each client once: bounded
        if (!http) {
          errors++;
          continue;
        }
        const std::string who = "client-" + std::to_string(c);
        HeaderList h = {{"ce-specversion", "1.0"},
                        {"ce-type", "dev.lifl.update"},
                        {"ce-id", who},
                        {"ce-source", who},
                        {"ce-round", "0"},
                        {"ce-numexamples", std::to_string(weightOf(c))},
                        {"Content-Type", "application/octet-stream"}};
        if (auth) h.emplace_back("Authorization", "Bearer " + tokens[c]);
        const auto& body = bodies[c % kBodies];
        const double s = now();
        auto r =
            http.value()->request("POST", "/v1/jobs/load/updates", h, body.data(), body.size());
        mine.push_back(now() - s);
        if (!r || r.value().status != 202) {
          if (errors++ < 5)
            std::fprintf(stderr, "update %u: %s\n", c,
                         r ? r.value().body.c_str() : r.error().toString().c_str());
        }
      }
      std::lock_guard lock(latencyMutex);
      latencies.insert(latencies.end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : threads) t.join();
  const double wall = now() - t0;
  const double cpu = p.cpu(*control.value()) - c0;

  // The round closes once the last update is folded in: bounded wait, then the model.
  nlohmann::json status;
  for (int i = 0; i < 6000; ++i) {
    auto s = control.value()->get("/v1/jobs/load");
    if (s && s.value().status == 200) status = nlohmann::json::parse(s.value().body);
    if (status.value("round", 0) >= 1) break;
    ::usleep(10000);
  }
  double worst = INFINITY;
  if (status.value("round", 0) >= 1) {
    auto model = control.value()->get("/v1/jobs/load/model");
    if (model && model.value().status == 200) {
      const std::vector<char> got(model.value().body.begin(), model.value().body.end());
      const auto values = valuesOf(got);
      std::vector<std::vector<float>> inputs;
      for (const auto& b : bodies) inputs.push_back(valuesOf(b));
      std::vector<double> weightOfBody(kBodies, 0.0);
      double total = 0;
      for (uint32_t c = 0; c < clients; ++c) {
        weightOfBody[c % kBodies] += static_cast<double>(weightOf(c));
        total += static_cast<double>(weightOf(c));
      }
      worst = 0;
      for (size_t i = 0; i < values.size() && i < params; ++i) {
        double ref = 0;
        for (int b = 0; b < kBodies; ++b) ref += weightOfBody[b] * inputs[b][i];
        ref /= total;
        worst = std::max(worst, std::abs(values[i] - ref));  // values are in [-1, 1)
      }
    }
  }

  const double rate = clients / wall;
  std::printf("load: %u clients x %zu F32 params (%.1f KB updates), %u connections, one round%s\n",
              clients, params, static_cast<double>(bodies[0].size()) / 1e3, connections,
              auth ? ", auth on (a token per update)" : "");
  bench::rule(110);
  std::printf("%-44s %10s %9s %9s %9s %7s %12s\n", "path", "updates/s", "p50 ms", "p99 ms",
              "max ms", "errors", "CPU ms/upd");
  bench::rule(110);
  std::printf("%-44s %10.0f %9s %9s %9s %7s %12s\n", "raw loopback TCP, same bytes, no HTTP", raw,
              "-", "-", "-", "-", "-");
  std::printf("%-44s %10.0f %9.2f %9.2f %9.2f %7u %12.3f\n", "LIFL gateway, accepted (202)", rate,
              bench::percentile(latencies, 0.5) * 1e3, bench::percentile(latencies, 0.99) * 1e3,
              bench::percentile(latencies, 1.0) * 1e3, errors.load(), cpu / clients * 1e3);
  bench::rule(110);
  std::printf("platform CPU: %.2f s over %.2f s of wall time (%.2f cores; agent + instances)\n",
              cpu, wall, cpu / wall);
  std::printf("round: %s, received %llu of %u; model max abs error vs double FedAvg %.2e\n",
              status.value("round", 0) >= 1 ? "closed" : "NOT CLOSED",
              static_cast<unsigned long long>(status.value("received", 0ull)), clients, worst);
  std::printf("target: >= 2000 updates/s with zero errors -> %.0f/s, %u errors: %s\n", rate,
              errors.load(), rate >= 2000 && errors == 0 ? "met" : "MISSED");
  return errors == 0 && status.value("round", 0) >= 1 && worst < 1e-4 ? 0 : 1;
}
