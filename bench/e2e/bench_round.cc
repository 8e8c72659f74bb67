// End-to-end round on one machine: N simulated clients push updates of P float32 parameters
// to a `lifl up` process; measured per round: whole-round wall time, time from the last
// update's arrival (its 202) to the new model being served, the platform's CPU-seconds, and
// peak memory (private RSS of agent and instances + live store bytes). The hierarchical
// eager design (default plan) runs beside a single-aggregator baseline that buffers every
// update and averages at the end (as Flower's server does), in the same run.
//
//   bench_round [--clients N ...] [--params P ...] [--uploaders 4] [--rounds 2]
//               [--routers ebpf userspace dpdk]
// Lists of N and P run every combination (e.g. --clients 100 1000 --params 1000000 11200000);
// --routers runs the hierarchical design on each router named (the baseline on the first).
#include <atomic>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_platform.h"
#include "bench_util.h"
#include "lifl/common/safetensors_header.h"

namespace {

using namespace lifl;
using bench::now;

struct Design {
  const char* name;
  nlohmann::json hierarchy;
  bool holdsAll;  ///< keeps every update in the store until the end
};

struct RoundResult {
  bool ok = false;
  std::string why;
  double wall = 0, lastToModel = 0, cpu = 0;
  bench::PlatformProcess::Memory peak;  ///< the sample with the most memory in use
};

std::vector<RoundResult> runDesign(const Design& design, const std::string& lifl, uint32_t n,
                                   size_t params, const std::vector<char>& body, uint32_t uploaders,
                                   uint32_t rounds, const std::string& router) {
  std::vector<RoundResult> out(rounds);
  const uint64_t updateBytes = body.size();
  // The buffered baseline needs every update in the store at once; the hierarchy a few.
  const uint64_t storeBytes = design.holdsAll
                                  ? (n + 8) * (updateBytes + (updateBytes >> 2)) + (256ull << 20)
                                  : std::max<uint64_t>(4ull << 30, 64 * updateBytes);
  if (storeBytes > (16ull << 30)) {
    for (auto& r : out)
      r.why = "needs a " + std::to_string(storeBytes >> 30) + " GiB store (all updates held)";
    return out;
  }
  bench::PlatformProcess platform(lifl, storeBytes, {"--router", router});
  if (!platform.up()) {
    for (auto& r : out) r.why = "lifl up did not start";
    return out;
  }
  auto control = HttpClient::connect(platform.url()).value();
  const std::string job = std::string("round-") + design.name;
  nlohmann::json spec = {
      {"id", job},
      {"model", {{"tensors", {{"w", {{"dtype", "F32"}, {"shape", {params}}}}}}, {"init", "zeros"}}},
      {"clients_per_round", n},
      {"rounds", rounds},
      {"hierarchy", design.hierarchy}};
  const std::string text = spec.dump();
  auto created = control->request("POST", "/v1/jobs", {{"Content-Type", "application/json"}},
                                  text.data(), text.size());
  if (!created || created.value().status != 201) {
    for (auto& r : out) r.why = "job creation failed";
    return out;
  }
  std::vector<std::unique_ptr<HttpClient>> clients;
  for (uint32_t u = 0; u < uploaders; ++u)
    clients.push_back(HttpClient::connect(platform.url()).value());
  for (uint32_t round = 0; round < rounds; ++round) {
    RoundResult& r = out[round];
    std::atomic<bool> sampling{true};
    bench::PlatformProcess::Memory peak;  // written by the sampler until it is joined
    std::thread sampler([&] {             // its own connection: the control one is used below
      auto c = HttpClient::connect(platform.url()).value();
      while (sampling) {
        const auto m = platform.memory(*c);
        if (m.total() > peak.total()) peak = m;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    const double c0 = platform.cpu(*control), t0 = now();
    std::atomic<uint32_t> next{0}, failures{0};
    std::vector<std::thread> threads;
    for (uint32_t u = 0; u < uploaders; ++u) {
      threads.emplace_back([&, u] {
        for (uint32_t c = next++; c < n; c = next++) {
          const std::string who = "sim" + std::to_string(c);
          HeaderList h = {{"ce-specversion", "1.0"},
                          {"ce-type", "dev.lifl.update"},
                          {"ce-id", who + "-r" + std::to_string(round)},
                          {"ce-source", who},
                          {"ce-round", std::to_string(round)},
                          {"ce-numexamples", std::to_string(1 + c % 50)},
                          {"Content-Type", "application/octet-stream"}};
          auto res = clients[u]->request("POST", "/v1/jobs/" + job + "/updates", h, body.data(),
                                         body.size());
          if (!res || res.value().status != 202) failures++;
        }
      });
    }
    for (auto& t : threads) t.join();
    const double lastArrival = now();
    bool served = false;
    while (now() - lastArrival < 300) {
      auto st = control->get("/v1/jobs/" + job);
      if (st && st.value().status == 200 &&
          nlohmann::json::parse(st.value().body).value("round", 0u) > round) {
        auto model = control->get("/v1/jobs/" + job + "/model");
        served = model && model.value().status == 200;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    const double end = now();
    sampling = false;
    sampler.join();
    r.ok = served && failures == 0;
    r.why = served ? (failures ? std::to_string(failures.load()) + " updates failed" : "")
                   : "no model in 300 s";
    r.wall = end - t0;
    r.lastToModel = end - lastArrival;
    r.cpu = platform.cpu(*control) - c0;
    r.peak = peak;
  }
  return out;
}

std::vector<uint64_t> listArg(int argc, char** argv, const char* name,
                              std::vector<uint64_t> fallback) {
  std::vector<uint64_t> out;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], name) != 0) continue;
    for (int j = i + 1; j < argc && argv[j][0] != '-'; ++j)
      out.push_back(std::strtoull(argv[j], nullptr, 10));
  }
  return out.empty() ? fallback : out;
}

}  // namespace

int main(int argc, char** argv) {
  const auto clientCounts = listArg(argc, argv, "--clients", {100});
  const auto paramCounts = listArg(argc, argv, "--params", {1'000'000});
  const auto uploaders = static_cast<uint32_t>(listArg(argc, argv, "--uploaders", {4})[0]);
  const auto rounds = static_cast<uint32_t>(listArg(argc, argv, "--rounds", {2})[0]);
  std::vector<std::string> routers;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--routers") != 0) continue;
    for (int j = i + 1; j < argc && argv[j][0] != '-'; ++j) routers.push_back(argv[j]);
  }
  if (routers.empty()) routers.push_back("ebpf");
  const std::string lifl = bench::liflBinary();
  const Design designs[] = {
      {"hierarchical-eager", nlohmann::json::object(), false},
      {"single-buffered", {{"levels", 1}, {"eager", false}}, true},
  };
  std::printf("end-to-end rounds, %u uploaders, %u rounds each (the first on a fresh store)\n",
              uploaders, rounds);
  bench::rule(132);
  std::printf("%-26s %6s %10s %6s | %10s %14s %10s %10s %22s  %s\n", "design/router", "N", "params",
              "round", "round s", "last->model s", "CPU s", "peak MB", "(store+private, procs)",
              "");
  bench::rule(132);
  for (uint64_t n : clientCounts) {
    for (uint64_t p : paramCounts) {
      const auto body = bench::randomUpdateBody(p, 11);
      for (const auto& router : routers)
        for (const auto& design : designs) {
          if (design.holdsAll && router != routers.front()) continue;
          const std::string name = std::string(design.name) + "/" + router;
          auto results =
              runDesign(design, lifl, static_cast<uint32_t>(n), p, body, uploaders, rounds, router);
          for (uint32_t r = 0; r < results.size(); ++r) {
            const auto& x = results[r];
            if (!x.ok && x.wall == 0) {
              std::printf("%-26s %6llu %10llu %6u | %s\n", name.c_str(),
                          static_cast<unsigned long long>(n), static_cast<unsigned long long>(p),
                          r + 1, x.why.c_str());
              continue;
            }
            std::printf(
                "%-26s %6llu %10llu %6u | %10.3f %14.3f %10.2f %10.1f %8.1f+%6.1f, %4u  %s\n",
                name.c_str(), static_cast<unsigned long long>(n),
                static_cast<unsigned long long>(p), r + 1, x.wall, x.lastToModel, x.cpu,
                static_cast<double>(x.peak.total()) / 1e6,
                static_cast<double>(x.peak.storeBytes) / 1e6,
                static_cast<double>(x.peak.privateBytes) / 1e6, x.peak.processes, x.why.c_str());
          }
        }
    }
  }
  bench::rule(132);
  std::printf(
      "targets (100 clients, 11.2 M params): round <= 2.5 s, last->model <= 0.3 s, CPU <= 3.4 s,\n"
      "peak memory <= 2 GB and flat in N\n");
  return 0;
}
