// Client subcommands: push, pull, job, status, token. They talk to a running gateway over
// HTTP, with the credential of --token, --token-file or $LIFL_TOKEN where auth is on.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "lifl/cli/args.h"
#include "lifl/cli/commands.h"
#include "lifl/cli/numpy_files.h"
#include "lifl/common/http_client.h"

namespace lifl::cli {
namespace {

constexpr const char* kDefaultUrl = "http://127.0.0.1:8080";

constexpr const char* kCredentialHelp =
    "The credential (docs/security.md), where the platform runs with security.auth: --token T,\n"
    "--token-file FILE or $LIFL_TOKEN; the admin credential for the jobs API and tokens, a\n"
    "client token for push. An https:// --url is verified against --ca-file (or\n"
    "$LIFL_CA_FILE; default: the system's CAs); for mTLS, --cert and --key (or\n"
    "$LIFL_CLIENT_CERT, $LIFL_CLIENT_KEY).";

/// An option, else the environment variable, else "".
std::string optionOrEnv(const Args& a, const char* option, const char* env) {
  if (a.has(option)) return a.get(option);
  const char* v = std::getenv(env);
  return v ? v : "";
}

/// A connection to --url, sending the command's credential.
Result<std::unique_ptr<HttpClient>> connectTo(const Args& a) {
  const TlsOptions tls{optionOrEnv(a, "ca-file", "LIFL_CA_FILE"),
                       optionOrEnv(a, "cert", "LIFL_CLIENT_CERT"),
                       optionOrEnv(a, "key", "LIFL_CLIENT_KEY")};
  LIFL_TRY(client, HttpClient::connect(a.get("url", kDefaultUrl), 0, tls));
  std::string credential = a.get("token");
  if (credential.empty() && a.has("token-file")) {
    LIFL_TRY(text, readFile(a.get("token-file")));
    credential = text;
  }
  if (credential.empty())
    if (const char* env = std::getenv("LIFL_TOKEN")) credential = env;
  while (!credential.empty() && (credential.back() == '\n' || credential.back() == ' '))
    credential.pop_back();
  client->setBearer(credential);
  return client;
}

Result<HttpResponse> expect2xx(Result<HttpResponse> r) {
  if (!r) return r.error();
  if (r.value().status < 200 || r.value().status >= 300) return errorOf(r.value());
  return r;
}

Result<nlohmann::json> getJson(HttpClient& c, const std::string& target) {
  LIFL_TRY(r, expect2xx(c.get(target)));
  auto doc = nlohmann::json::parse(r.body, nullptr, false);
  if (doc.is_discarded()) return internal("bad_response", target + " did not answer JSON");
  return doc;
}

}  // namespace

int cmdPush(int argc, char** argv) {
  auto parsed = Args::parse(argc, argv, 2);
  if (!parsed) return fail(parsed.error());
  const Args& a = parsed.value();
  if (a.wantsHelp() || !a.has("job") || !a.has("file") || !a.has("client")) {
    std::puts(
        "usage: lifl push --job JOB --file UPDATE --client ID\n"
        "                 [--examples N] [--round R] [--id CE_ID] [--tensor NAME]\n"
        "                 [--url http://127.0.0.1:8080]\n"
        "Pushes one client update as a CloudEvent (binary mode). UPDATE is .safetensors, .npz\n"
        "(a dict of arrays, np.savez) or .npy (one array, named --tensor or the file's stem);\n"
        "numpy float64 arrays are sent as float32. --round defaults to the job's current\n"
        "round; --examples (the FedAvg weight) to 1; --id to a fresh unique id.");
    std::puts(kCredentialHelp);
    return a.wantsHelp() ? 0 : 1;
  }
  auto body = updateBodyFromFile(a.get("file"), a.get("tensor"));
  if (!body) return fail(body.error());
  auto client = connectTo(a);
  if (!client) return fail(client.error());
  const std::string job = a.get("job");
  auto examples = a.getUnsigned("examples", 1);
  if (!examples) return fail(examples.error());
  std::string round = a.get("round");
  if (round.empty()) {
    auto status = getJson(*client.value(), "/v1/jobs/" + job);
    if (!status) return fail(status.error());
    round = std::to_string(status.value().value("round", 0));
  }
  std::string id = a.get("id");
  if (id.empty())
    id = a.get("client") + "-r" + round + "-" + std::to_string(std::random_device{}());
  HeaderList headers = {{"ce-specversion", "1.0"},
                        {"ce-type", "dev.lifl.update"},
                        {"ce-id", id},
                        {"ce-source", a.get("client")},
                        {"ce-round", round},
                        {"ce-numexamples", std::to_string(examples.value())},
                        {"Content-Type", "application/octet-stream"}};
  auto r = expect2xx(client.value()->request("POST", "/v1/jobs/" + job + "/updates", headers,
                                             body.value().data(), body.value().size()));
  if (!r) return fail(r.error());
  std::printf("%s\n", r.value().body.c_str());
  return 0;
}

int cmdPull(int argc, char** argv) {
  auto parsed = Args::parse(argc, argv, 2);
  if (!parsed) return fail(parsed.error());
  const Args& a = parsed.value();
  if (a.wantsHelp() || !a.has("job")) {
    std::puts(
        "usage: lifl pull --job JOB [--out model.safetensors] [--url http://127.0.0.1:8080]\n"
        "Downloads the job's current global model (safetensors) and prints its round.");
    std::puts(kCredentialHelp);
    return a.wantsHelp() ? 0 : 1;
  }
  auto client = connectTo(a);
  if (!client) return fail(client.error());
  auto r = expect2xx(client.value()->get("/v1/jobs/" + a.get("job") + "/model"));
  if (!r) return fail(r.error());
  const std::string out = a.get("out", a.get("job") + ".safetensors");
  std::ofstream f(out, std::ios::binary);
  f.write(r.value().body.data(), static_cast<std::streamsize>(r.value().body.size()));
  if (!f) return fail(internal("write_failed", "cannot write " + out));
  std::printf("round %s: %zu bytes -> %s\n", r.value().header("lifl-round").c_str(),
              r.value().body.size(), out.c_str());
  return 0;
}

int cmdJob(int argc, char** argv) {
  auto parsed = Args::parse(argc, argv, 2);
  if (!parsed) return fail(parsed.error());
  const Args& a = parsed.value();
  const auto& pos = a.positionals();
  if (a.wantsHelp() || pos.empty()) {
    std::puts(
        "usage: lifl job create SPEC.json|SPEC.yaml [--url URL]\n"
        "       lifl job list | status ID | cancel ID [--url URL]\n"
        "Manages FL jobs through the jobs API (API.md).");
    std::puts(kCredentialHelp);
    return a.wantsHelp() ? 0 : 1;
  }
  auto client = connectTo(a);
  if (!client) return fail(client.error());
  Result<HttpResponse> r = internal("unreachable", "");
  if (pos[0] == "create" && pos.size() == 2) {
    auto spec = readFile(pos[1]);
    if (!spec) return fail(spec.error());
    const bool yaml = pos[1].ends_with(".yaml") || pos[1].ends_with(".yml");
    r = client.value()->request("POST", "/v1/jobs",
                                {{"Content-Type", yaml ? "application/yaml" : "application/json"}},
                                spec.value().data(), spec.value().size());
  } else if (pos[0] == "list") {
    r = client.value()->get("/v1/jobs");
  } else if (pos[0] == "status" && pos.size() == 2) {
    r = client.value()->get("/v1/jobs/" + pos[1]);
  } else if (pos[0] == "cancel" && pos.size() == 2) {
    r = client.value()->request("DELETE", "/v1/jobs/" + pos[1]);
  } else {
    return fail(badRequest("bad_arguments", "unknown job subcommand; see lifl job --help"));
  }
  r = expect2xx(std::move(r));
  if (!r) return fail(r.error());
  auto doc = nlohmann::json::parse(r.value().body, nullptr, false);
  std::printf("%s\n", doc.is_discarded() ? r.value().body.c_str() : doc.dump(2).c_str());
  return 0;
}

int cmdStatus(int argc, char** argv) {
  auto parsed = Args::parse(argc, argv, 2);
  if (!parsed) return fail(parsed.error());
  const Args& a = parsed.value();
  if (a.wantsHelp()) {
    std::puts(
        "usage: lifl status [--url http://127.0.0.1:8080]\n"
        "Shows readiness and the jobs; for a controller's URL, its nodes as well.");
    std::puts(kCredentialHelp);
    return 0;
  }
  auto client = connectTo(a);
  if (!client) return fail(client.error());
  auto ready = client.value()->get("/readyz");
  if (!ready) return fail(ready.error());
  std::printf("gateway: %s\n", ready.value().status == 200 ? "ready" : "not ready");
  auto jobs = getJson(*client.value(), "/v1/jobs");
  if (!jobs) return fail(jobs.error());
  for (const auto& j : jobs.value())
    std::printf("job %-20s round %-6d %s\n", j.value("id", "").c_str(), j.value("round", 0),
                j.value("state", "").c_str());
  auto nodes = client.value()->get("/v1/nodes");  // only a controller has nodes
  if (nodes && nodes.value().status == 200) {
    auto doc = nlohmann::json::parse(nodes.value().body, nullptr, false);
    if (doc.is_array())
      for (const auto& n : doc)
        std::printf("node %-19s %-5s %s, %u slots, last heartbeat %.1f s ago\n",
                    n.value("name", "").c_str(), n.value("state", "").c_str(),
                    n.value("url", "").c_str(), n.value("slots", 0u),
                    n.value("seconds_since_heartbeat", 0.0));
  }
  return 0;
}

int cmdToken(int argc, char** argv) {
  auto parsed = Args::parse(argc, argv, 2);
  if (!parsed) return fail(parsed.error());
  const Args& a = parsed.value();
  const auto& pos = a.positionals();
  if (a.wantsHelp() || pos.size() != 1 || pos[0] != "create" || !a.has("job") || !a.has("client")) {
    std::puts(
        "usage: lifl token create --job JOB --client ID [--ttl SECONDS] [--url URL]\n"
        "Asks the platform (its controller) to sign a client token: it lets client ID push\n"
        "updates to JOB, with ce-source ID, and read JOB's model, until it expires (--ttl,\n"
        "default security.token_ttl_seconds). Prints the token alone on stdout.");
    std::puts(kCredentialHelp);
    return a.wantsHelp() ? 0 : 1;
  }
  nlohmann::json request = {{"job", a.get("job")}, {"client", a.get("client")}};
  if (a.has("ttl")) {
    auto ttl = a.getDouble("ttl", 0);
    if (!ttl) return fail(ttl.error());
    if (!(ttl.value() > 0)) return fail(badRequest("bad_arguments", "--ttl must be positive"));
    request["ttl_seconds"] = ttl.value();
  }
  auto client = connectTo(a);
  if (!client) return fail(client.error());
  const std::string body = request.dump();
  auto r = expect2xx(client.value()->request(
      "POST", "/v1/tokens", {{"Content-Type", "application/json"}}, body.data(), body.size()));
  if (!r) return fail(r.error());
  auto doc = nlohmann::json::parse(r.value().body, nullptr, false);
  if (!doc.is_object() || !doc.contains("token") || !doc["token"].is_string())
    return fail(internal("bad_response", "the platform did not answer a token"));
  std::printf("%s\n", doc["token"].get<std::string>().c_str());
  return 0;
}

}  // namespace lifl::cli
