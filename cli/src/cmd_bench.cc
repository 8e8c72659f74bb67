// `lifl bench clients`: N simulated clients push random updates over HTTP, round after
// round, with a progress bar; each round's global model is pulled and checked against a
// double-precision FedAvg computed here, independently of the platform.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "lifl/cli/args.h"
#include "lifl/cli/commands.h"
#include "lifl/cli/embedded.h"
#include "lifl/common/http_client.h"
#include "lifl/common/log.h"
#include "lifl/common/safetensors_header.h"

namespace lifl::cli {
namespace {

constexpr const char* kBenchHelp =
    "usage: lifl bench clients [--clients 50] [--params 1000000] [--rounds 3] [--fan-in 8]\n"
    "                          [--uploaders 4] [--url URL] [--job ID]\n"
    "                          [--router ebpf|userspace|dpdk]\n"
    "\n"
    "Simulates N clients pushing random F32 updates (with random ce-numexamples) over HTTP.\n"
    "Without --url it starts the platform in this process (same flags as `lifl up`).\n"
    "Prints each round's time and the model's largest relative error against a\n"
    "double-precision FedAvg computed by the benchmark itself.";

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Simulation {
  std::vector<TensorSpec> tensors;
  uint64_t params = 0;
  std::string header;

  /// Client c's update for round r: values uniform in [-1, 1), weight 1..100.
  uint64_t fill(uint32_t round, uint32_t client, float* out) const {
    uint64_t s = mix((uint64_t{round} << 32) | client);
    for (uint64_t i = 0; i < params; ++i) {
      s = mix(s);
      out[i] = static_cast<float>(static_cast<double>(s >> 40) * 0x1.0p-23 - 1.0);
    }
    return 1 + mix(s ^ 0xabcdef) % 100;
  }
};

void progress(uint32_t done, uint32_t total, double seconds, uint64_t bytes) {
  const int width = 30;
  const int filled = static_cast<int>(width * done / std::max<uint32_t>(total, 1));
  std::fprintf(stderr, "\r  [%.*s%*s] %u/%u updates  %.0f MB/s ", filled,
               "##############################", width - filled, "", done, total,
               seconds > 0 ? static_cast<double>(bytes) / seconds / 1e6 : 0.0);
}

Result<nlohmann::json> jobStatus(HttpClient& c, const std::string& job) {
  LIFL_TRY(r, c.get("/v1/jobs/" + job));
  if (r.status != 200) return errorOf(r);
  return nlohmann::json::parse(r.body);
}

}  // namespace

int cmdBench(int argc, char** argv) {
  auto parsed = Args::parse(argc, argv, 2);
  if (!parsed) return fail(parsed.error());
  const Args& a = parsed.value();
  if (a.wantsHelp() || a.positionals().empty() || a.positionals()[0] != "clients") {
    std::puts(kBenchHelp);
    return a.wantsHelp() ? 0 : 1;
  }
  auto clients = a.getUnsigned("clients", 50);
  auto params = a.getUnsigned("params", 1'000'000);
  auto rounds = a.getUnsigned("rounds", 3);
  auto fanIn = a.getUnsigned("fan-in", 8);
  auto uploaders = a.getUnsigned("uploaders", 4);
  for (auto* r : {&clients, &params, &rounds, &fanIn, &uploaders})
    if (!*r) return fail(r->error());
  if (clients.value() == 0 || params.value() < 2 || rounds.value() == 0 || uploaders.value() == 0)
    return fail(
        badRequest("bad_arguments", "clients, rounds and uploaders must be positive, params >= 2"));

  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // results interleave with the progress on stderr
  std::unique_ptr<dataplane::Agent> embedded;
  std::string url = a.get("url");
  if (url.empty()) {
    if (!std::getenv("LIFL_LOG")) log::setLevel(log::Level::Warn);  // the table tells the story
    // Its own data dir: the demo's jobs are not the node's jobs to restore later.
    Args own = a;
    char dir[] = "/tmp/lifl-bench-XXXXXX";
    if (!a.has("data-dir") && ::mkdtemp(dir)) own = Args::withOption(a, "data-dir", dir);
    auto agent = startAgent(own, /*defaultPort=*/0);
    if (!agent) return fail(agent.error());
    embedded = std::move(agent).value();
    url = "http://127.0.0.1:" + std::to_string(embedded->port());
    std::printf(
        "platform up in this process: %s router, object store of %llu MiB, %u warm function "
        "instances\n",
        embedded->config().router.c_str(),
        static_cast<unsigned long long>(embedded->config().storeBytes >> 20),
        embedded->config().warmPool);
  }

  Simulation sim;
  sim.params = params.value();
  const uint64_t bias = std::min<uint64_t>(256, sim.params / 2);
  sim.tensors = {{"layer.bias", {static_cast<int64_t>(bias)}, bias},
                 {"layer.weight", {static_cast<int64_t>(sim.params - bias)}, sim.params - bias}};
  sim.header = f32SafetensorsHeader(sim.tensors);
  const std::string job = a.get("job", "bench-" + std::to_string(::getpid()));

  auto control = HttpClient::connect(url);
  if (!control) return fail(control.error());
  nlohmann::json spec = {{"id", job},
                         {"model",
                          {{"tensors",
                            {{"layer.bias", {{"dtype", "F32"}, {"shape", {bias}}}},
                             {"layer.weight", {{"dtype", "F32"}, {"shape", {sim.params - bias}}}}}},
                           {"init", "zeros"}}},
                         {"clients_per_round", clients.value()},
                         {"rounds", rounds.value()},
                         {"hierarchy", {{"fan_in", fanIn.value()}}}};
  const std::string specText = spec.dump();
  auto created = control.value()->request(
      "POST", "/v1/jobs", {{"Content-Type", "application/json"}}, specText.data(), specText.size());
  if (!created) return fail(created.error());
  if (created.value().status != 201) return fail(errorOf(created.value()));

  if (auto st = jobStatus(*control.value(), job); st) {
    const auto& plan = st.value()["plan"];
    std::printf(
        "aggregation tree: %u leaf aggregators (fan-in %u) under one top, function instances %s\n",
        plan.value("leaves", 0u), plan.value("fan_in", 0u), plan["instances"].dump().c_str());
  }
  const uint32_t n = static_cast<uint32_t>(clients.value());
  const uint32_t threads = static_cast<uint32_t>(std::min<uint64_t>(uploaders.value(), n));
  const uint64_t bodyBytes = sim.header.size() + sim.params * sizeof(float);
  std::printf(
      "job %s: %u clients x %llu rounds, %llu parameters (%.1f MB per update), fan-in %llu, %s\n",
      job.c_str(), n, static_cast<unsigned long long>(rounds.value()),
      static_cast<unsigned long long>(sim.params), static_cast<double>(bodyBytes) / 1e6,
      static_cast<unsigned long long>(fanIn.value()), url.c_str());
  double worst = 0;
  bool ok = true;
  for (uint32_t round = 0; round < rounds.value() && ok; ++round) {
    std::printf("round %u: %u clients pushing\n", round + 1, n);
    std::vector<std::vector<double>> partial(threads, std::vector<double>(sim.params, 0.0));
    std::vector<double> weights(threads, 0.0);
    std::atomic<uint32_t> done{0};
    std::atomic<uint64_t> sent{0};
    std::atomic<bool> failed{false};
    std::string failure;
    std::mutex failureMutex;
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (uint32_t t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        auto client = HttpClient::connect(url);
        if (!client) {
          std::lock_guard lock(failureMutex);
          failure = client.error().toString();
          failed = true;
          return;
        }
        std::vector<char> body(bodyBytes);
        std::memcpy(body.data(), sim.header.data(), sim.header.size());
        auto* values = reinterpret_cast<float*>(body.data() + sim.header.size());
        for (uint32_t c = t; c < n && !failed; c += threads) {
          const uint64_t w = sim.fill(round, c, values);
          for (uint64_t i = 0; i < sim.params; ++i)
            partial[t][i] += static_cast<double>(w) * values[i];
          weights[t] += static_cast<double>(w);
          const std::string id = "sim-" + std::to_string(c) + "-r" + std::to_string(round);
          HeaderList headers = {{"ce-specversion", "1.0"},
                                {"ce-type", "dev.lifl.update"},
                                {"ce-id", id},
                                {"ce-source", "sim-" + std::to_string(c)},
                                {"ce-round", std::to_string(round)},
                                {"ce-numexamples", std::to_string(w)},
                                {"Content-Type", "application/octet-stream"}};
          auto r = client.value()->request("POST", "/v1/jobs/" + job + "/updates", headers,
                                           body.data(), body.size());
          if (!r || r.value().status != 202) {
            std::lock_guard lock(failureMutex);
            failure = r ? errorOf(r.value()).toString() : r.error().toString();
            failed = true;
            return;
          }
          sent += body.size();
          done++;
        }
      });
    }
    while (done < n && !failed) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      progress(done, n,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
               sent);
    }
    for (auto& w : workers) w.join();
    const double pushSeconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress(done, n, pushSeconds, sent);
    std::fprintf(stderr, "\n");
    if (failed) {
      std::fprintf(stderr, "lifl bench: an update failed: %s\n", failure.c_str());
      return 2;
    }
    // Wait (bounded) for the round's model.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
    for (;;) {
      auto status = jobStatus(*control.value(), job);
      if (!status) return fail(status.error());
      if (status.value().value("round", 0u) > round) break;
      if (status.value().value("state", "") == "failed")
        return fail(internal("job_failed", status.value().dump()));
      if (std::chrono::steady_clock::now() > deadline)
        return fail(internal("timeout", "the round did not finish in 300 s"));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const double roundSeconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    auto model = control.value()->get("/v1/jobs/" + job + "/model");
    if (!model || model.value().status != 200)
      return fail(model ? errorOf(model.value()) : model.error());
    // Independent reference: sum_i n_i x_i / sum_i n_i in double precision.
    double w = 0;
    for (double x : weights) w += x;
    const auto* got = reinterpret_cast<const float*>(model.value().body.data() + sim.header.size());
    if (model.value().body.size() != bodyBytes)
      return fail(internal("bad_model", "model has the wrong size"));
    double maxErr = 0, maxRef = 0;
    for (uint64_t i = 0; i < sim.params; ++i) {
      double ref = 0;
      for (uint32_t t = 0; t < threads; ++t) ref += partial[t][i];
      ref /= w;
      maxErr = std::max(maxErr, std::abs(got[i] - ref));
      maxRef = std::max(maxRef, std::abs(ref));
    }
    const double rel = maxErr / std::max(maxRef, 1e-30);
    worst = std::max(worst, rel);
    std::printf(
        "  round %u done in %.3f s (uploads %.3f s, %.0f MB/s); new global model pulled;\n"
        "  max |model - fedavg| / max|fedavg| = %.2e against a double-precision FedAvg\n",
        round + 1, roundSeconds, pushSeconds, static_cast<double>(sent) / pushSeconds / 1e6, rel);
    if (rel > 1e-5) ok = false;
  }
  if (auto inst = control.value()->get("/v1/instances"); inst && inst.value().status == 200) {
    uint64_t delivered = 0;
    for (const auto& i : nlohmann::json::parse(inst.value().body))
      delivered += i.value("delivered_messages", 0ull);
    std::printf(
        "router: its counters of the live instances show %llu descriptors delivered; "
        "the updates themselves were written once, into shared memory\n",
        static_cast<unsigned long long>(delivered));
  }
  std::printf("%s: %llu rounds, worst relative error %.2e (tolerance 1e-5, fp32 accumulation)\n",
              ok ? "PASS" : "FAIL", static_cast<unsigned long long>(rounds.value()), worst);
  if (embedded) {
    embedded->stop();
    if (!a.has("data-dir")) std::filesystem::remove_all(embedded->config().dataDir);
  }
  return ok ? 0 : 3;
}

}  // namespace lifl::cli
