// Boost.Beast gateway. One coroutine per connection, each on its own strand; the
// io_context runs on `gateway.threads` threads. This is the only translation unit that
// instantiates Beast's server side (build time on 2 cores).
#include "lifl/dataplane/gateway.h"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <boost/beast/ssl.hpp>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>  // before Asio: g++ 12 needs std::exchange for asio::awaitable

#include "completion_relay.h"
#include "lifl/common/base64.h"
#include "lifl/common/http_client.h"
#include "lifl/common/job_spec.h"
#include "lifl/common/log.h"
#include "lifl/common/scope_exit.h"
#include "lifl/common/text.h"
#include "lifl/common/tls_context.h"
#include "lifl/common/tls_handshake.h"
#include "lifl/dataplane/event_object.h"

namespace lifl::dataplane {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using Parser = http::request_parser<http::buffer_body>;

namespace {

constexpr uint64_t kDrainLimit = 1ull << 20;  // bodies we read and discard to keep a connection
constexpr uint64_t kMaxJobSpecBytes = 4ull << 20;
constexpr uint64_t kMaxForwardedBytes = 1ull << 30;  // an initial model PUT through the gateway

/// One request on a connection and what the handlers need to answer it. Stream: a
/// beast::tcp_stream, or a beast::ssl_stream over one (gateway.tls_*).
template <class Stream>
struct Exchange {
  Stream& stream;
  beast::flat_buffer& buffer;
  Parser& parser;
  bool keepAlive = true;
  std::string route = "other";
  int status = 0;
  bool bodyRead = false;  ///< the body was read past the parser (fixed-length fast path)
};

std::string_view header(const Parser& p, std::string_view name) {
  auto it = p.get().find(beast::string_view(name.data(), name.size()));
  if (it == p.get().end()) return {};
  auto v = it->value();
  return {v.data(), v.size()};
}

}  // namespace

struct Gateway::Impl {
  Impl(const AgentConfig& c, JobManager& j, ChainManager& ch, ObjectStore& s, Metrics& m,
       AccessPolicy& a, GatewayHooks h)
      : config(c), jobs(j), chains(ch), store(s), metrics(m), access(a), hooks(std::move(h)) {}

  const AgentConfig& config;
  JobManager& jobs;
  ChainManager& chains;
  ObjectStore& store;
  Metrics& metrics;
  AccessPolicy& access;
  GatewayHooks hooks;
  asio::io_context ioc;
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
  std::atomic<uint32_t> connections{0};
  std::optional<asio::ssl::context> tls;  ///< gateway.tls_cert_file set: HTTPS only
  /// Completions: those served here, the model served here, the completions relayed to
  /// each other node and still running, and the client context for https:// nodes.
  std::atomic<uint32_t> completionsInFlight{0};
  const std::string servedModelName = servedModel(config.chains);
  const std::string servedRole = servedModelRole(config.chains);  ///< both, prefill or decode
  std::mutex relayMutex;
  std::map<std::string, uint32_t> relayedTo;
  std::optional<asio::ssl::context> relayTls;
  static constexpr double kRelayConnectSeconds = 5;

  // ---------------------------------------------------------------- responses
  template <class S>
  awaitable<void> write(Exchange<S>& ex, http::status status, std::string body,
                        std::string_view contentType,
                        std::vector<std::pair<std::string, std::string>> headers = {}) {
    http::response<http::string_body> res{status, ex.parser.get().version()};
    res.set(http::field::server, "lifl");
    res.set(http::field::content_type, beast::string_view(contentType.data(), contentType.size()));
    for (auto& [k, v] : headers) res.set(k, v);
    res.body() = std::move(body);
    res.keep_alive(ex.keepAlive);
    res.prepare_payload();
    ex.status = static_cast<int>(status);
    beast::error_code ec;
    co_await http::async_write(ex.stream, res, asio::redirect_error(use_awaitable, ec));
    if (ec) ex.keepAlive = false;
  }
  /// A 200 answer of the `size` bytes at `data` (application/octet-stream), written to the
  /// socket from where they are: no copy. The caller keeps them until it returns.
  template <class S>
  awaitable<void> writeInPlace(Exchange<S>& ex, const void* data, uint64_t size,
                               const HeaderList& headers) {
    http::response<http::buffer_body> res{http::status::ok, ex.parser.get().version()};
    res.set(http::field::server, "lifl");
    res.set(http::field::content_type, "application/octet-stream");
    for (const auto& [k, v] : headers) res.set(k, v);
    res.body().data = const_cast<void*>(data);
    res.body().size = size;
    res.body().more = false;
    res.content_length(size);
    res.keep_alive(ex.keepAlive);
    ex.status = 200;
    beast::error_code ec;
    co_await http::async_write(ex.stream, res, asio::redirect_error(use_awaitable, ec));
    if (ec) ex.keepAlive = false;
  }

  template <class S>
  awaitable<void> writeJson(Exchange<S>& ex, http::status status, const nlohmann::json& body) {
    co_await write(ex, status, body.dump(), "application/json");
  }

  // Errors by value: a coroutine frame keeps its own copy (callers may pass temporaries).
  template <class S>
  awaitable<void> writeError(Exchange<S>& ex, Error e,
                             std::vector<std::pair<std::string, std::string>> headers = {}) {
    if (ex.route == "updates") metrics.updateRejected(e.code);
    if (e.status == 401) headers.emplace_back("www-authenticate", "Bearer realm=\"lifl\"");
    co_await write(ex, static_cast<http::status>(e.status), e.toJson(), "application/json",
                   std::move(headers));
  }

  /// A request refused from its headers (credentials, rate): the body is never read (the
  /// connection closes after the answer).
  template <class S>
  awaitable<void> refuseUnread(Exchange<S>& ex, Error e,
                               std::vector<std::pair<std::string, std::string>> headers = {}) {
    ex.keepAlive = false;
    co_await writeError(ex, std::move(e), std::move(headers));
  }

  // ---------------------------------------------------------------- bodies
  /// Reads the body into [dst, dst+capacity). @return bytes read.
  /// A Content-Length body is read from the socket straight into dst (after the few bytes
  /// that arrived with the header): no intermediate buffer, large recv calls. Beast's parser
  /// would pass it through its 64 KiB read buffer, a second copy and 5x slower here.
  template <class S>
  awaitable<Result<uint64_t>> readBodyInto(Exchange<S>& ex, std::byte* dst, uint64_t capacity) {
    if (auto cl = ex.parser.content_length(); cl && !ex.parser.chunked()) {
      if (*cl > capacity) {
        ex.keepAlive = false;
        co_return makeError(413, "body_too_large", "the body is larger than this endpoint allows");
      }
      const uint64_t buffered = std::min<uint64_t>(ex.buffer.size(), *cl);
      std::memcpy(dst, ex.buffer.data().data(), buffered);
      ex.buffer.consume(buffered);
      ex.bodyRead = true;
      beast::error_code ec;
      // asio's transfer_all() caps each recv at 64 KiB; large recvs halve the syscalls.
      const uint64_t want = *cl - buffered;
      auto upTo16MiB = [want](const beast::error_code& e, std::size_t done) -> std::size_t {
        return e || done >= want ? 0 : std::min<std::size_t>(want - done, 16u << 20);
      };
      co_await asio::async_read(ex.stream, asio::buffer(dst + buffered, want), upTo16MiB,
                                asio::redirect_error(use_awaitable, ec));
      if (ec) {
        ex.keepAlive = false;
        if (ec == beast::error::timeout)
          co_return makeError(408, "body_timeout", "the body did not arrive in time");
        co_return badRequest("truncated_body", "the body ended early: " + ec.message());
      }
      co_return *cl;
    }
    auto& body = ex.parser.get().body();
    body.data = dst;
    body.size = capacity;
    while (!ex.parser.is_done()) {
      beast::error_code ec;
      co_await http::async_read(ex.stream, ex.buffer, ex.parser,
                                asio::redirect_error(use_awaitable, ec));
      if (ec == http::error::need_buffer) {
        if (body.size == 0) {
          ex.keepAlive = false;
          co_return makeError(413, "body_too_large",
                              "the body is larger than this endpoint allows");
        }
        continue;
      }
      if (ec) {
        ex.keepAlive = false;
        if (ec == beast::error::timeout)
          co_return makeError(408, "body_timeout", "the body did not arrive in time");
        co_return badRequest("truncated_body", "the body ended early: " + ec.message());
      }
    }
    co_return capacity - body.size;
  }

  template <class S>
  awaitable<Result<std::string>> readBodyString(Exchange<S>& ex, uint64_t limit) {
    std::string out;
    auto cl = ex.parser.content_length();
    if (cl && *cl > limit) {
      ex.keepAlive = false;
      co_return makeError(413, "body_too_large",
                          "the body is larger than " + std::to_string(limit) + " bytes");
    }
    out.resize(cl ? *cl : std::min<uint64_t>(limit, 64 << 10));
    uint64_t have = 0;
    for (;;) {
      auto got = co_await readBodyInto(ex, reinterpret_cast<std::byte*>(out.data()) + have,
                                       out.size() - have);
      if (got) {
        out.resize(have + got.value());
        co_return out;
      }
      if (got.error().status != 413 || out.size() >= limit || cl) co_return got.error();
      // chunked body outgrew the buffer: grow and continue
      have = out.size();
      out.resize(std::min<uint64_t>(limit, out.size() * 2));
      ex.keepAlive = true;
    }
  }

  /// Before answering a request whose body we will not use: read and drop a small body so
  /// the connection stays usable; close it for a large one.
  template <class S>
  awaitable<void> drainOrClose(Exchange<S>& ex) {
    if (ex.bodyRead || ex.parser.is_done()) co_return;
    auto cl = ex.parser.content_length();
    if (!cl || *cl > kDrainLimit) {
      ex.keepAlive = false;
      co_return;
    }
    std::string sink(static_cast<size_t>(*cl), '\0');
    auto r = co_await readBodyInto(ex, reinterpret_cast<std::byte*>(sink.data()), sink.size());
    if (!r) ex.keepAlive = false;
  }

  template <class S>
  awaitable<void> rejectBeforeBody(Exchange<S>& ex, Error e) {
    co_await drainOrClose(ex);
    co_await writeError(ex, e);
  }

  template <class S>
  awaitable<void> maybeContinue(Exchange<S>& ex) {
    if (!iequals(header(ex.parser, "expect"), "100-continue")) co_return;
    static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    beast::error_code ec;
    co_await asio::async_write(ex.stream, asio::buffer(kContinue),
                               asio::redirect_error(use_awaitable, ec));
  }

  // ---------------------------------------------------------------- jobs
  template <class S>
  awaitable<void> createJob(Exchange<S>& ex) {
    auto body = co_await readBodyString(ex, kMaxJobSpecBytes);
    if (!body) co_return co_await writeError(ex, body.error());
    auto spec = parseJobSpec(body.value(), header(ex.parser, "content-type"));
    if (!spec) co_return co_await writeError(ex, spec.error());
    auto created = jobs.create(std::move(spec).value());
    if (!created) co_return co_await writeError(ex, created.error());
    co_await writeJson(ex, http::status::created, created.value());
  }

  // A job's model in BF16, made once per model object and shared by the pulls that want it.
  std::mutex bf16Mutex;
  std::map<std::string, std::pair<uint64_t, std::shared_ptr<const std::string>>> bf16Models;

  /// The BF16 form of a leased model, converted once per model (a saved one is keyed by its
  /// round: its generation is that of no store object).
  Result<std::shared_ptr<const std::string>> bf16Model(const std::string& id, const ModelLease& m) {
    std::lock_guard lock(bf16Mutex);
    auto& [version, bytes] = bf16Models[id];
    const uint64_t current = m.file ? (uint64_t{1} << 63) | m.round : m.object.handle().generation;
    if (!bytes || version != current) {
      LIFL_TRY(encoded, modelAsBF16(m.data(), m.size()));
      bytes = std::make_shared<const std::string>(std::move(encoded));
      version = current;
    }
    return bytes;
  }

  template <class S>
  awaitable<void> getModel(Exchange<S>& ex, const std::string& id) {
    const std::string dtype = queryParam(std::string(ex.parser.get().target()), "dtype");
    const bool bf16 = dtype == "bf16" || dtype == "BF16";
    if (!bf16 && !dtype.empty() && dtype != "f32" && dtype != "F32")
      co_return co_await writeError(
          ex, badRequest("bad_dtype", "dtype must be f32 or bf16, not " + dtype));
    auto lease = jobs.leaseModel(id);
    if (!lease) co_return co_await writeError(ex, lease.error());
    const ModelLease& m = lease.value();
    std::shared_ptr<const std::string> converted;
    if (bf16) {
      auto made = bf16Model(id, m);
      if (!made) {
        jobs.returnModel(m);
        co_return co_await writeError(ex, made.error());
      }
      converted = made.value();
    }
    const HeaderList headers = {
        {"ETag", "\"" + std::to_string(m.round) + (bf16 ? "-bf16" : "") + "\""},
        {"lifl-round", std::to_string(m.round)}};
    // F32: served straight from the store (or a finished job's mapped checkpoint); BF16: from
    // the shared conversion.
    const void* bytes = converted ? static_cast<const void*>(converted->data())
                                  : static_cast<const void*>(m.data());
    co_await writeInPlace(ex, bytes, converted ? converted->size() : m.size(), headers);
    jobs.returnModel(m);
  }

  template <class S>
  awaitable<void> putModel(Exchange<S>& ex, const std::string& id) {
    auto limit = jobs.admitModel(id);
    if (!limit) co_return co_await rejectBeforeBody(ex, limit.error());
    auto cl = ex.parser.content_length();
    if (cl && *cl > limit.value()) {
      ex.keepAlive = false;
      co_return co_await writeError(
          ex, makeError(413, "body_too_large", "model body is larger than the model"));
    }
    co_await maybeContinue(ex);
    const uint64_t capacity = cl ? *cl : limit.value();
    auto object = store.allocate(capacity, ObjectKind::Model, kAgentInstance);
    if (!object) co_return co_await rejectBeforeBody(ex, object.error());
    ObjectRef temp = object.value();
    auto got = co_await readBodyInto(ex, temp.data(), capacity);
    Result<void> set =
        got ? (temp.setLength(got.value()), jobs.setModel(id, temp)) : Result<void>(got.error());
    store.release(temp.handle());
    if (!set) co_return co_await writeError(ex, set.error());
    co_await write(ex, http::status::no_content, "", "application/json");
  }

  template <class S>
  awaitable<void> pushUpdate(Exchange<S>& ex, const std::string& id) {
    ex.route = "updates";
    auto allowed = access.requireClient(header(ex.parser, "authorization"), id,
                                        header(ex.parser, "ce-source"));
    if (!allowed) co_return co_await refuseUnread(ex, allowed.error());
    auto meta = parseUpdateHeaders([&](std::string_view name) { return header(ex.parser, name); });
    if (!meta) co_return co_await rejectBeforeBody(ex, meta.error());
    if (auto wait = access.takeRate(id, meta.value().source)) {
      std::vector<std::pair<std::string, std::string>> retryAfter;  // whole seconds, at least 1
      retryAfter.emplace_back(
          "retry-after", std::to_string(static_cast<uint64_t>(std::max(1.0, std::ceil(*wait)))));
      co_return co_await refuseUnread(
          ex,
          makeError(429, "rate_limited",
                    "client " + meta.value().source + " sends updates faster than " +
                        std::to_string(access.clientRate()) + " a second"),
          std::move(retryAfter));
    }
    auto admission = jobs.admit(id, meta.value());
    if (!admission) co_return co_await rejectBeforeBody(ex, admission.error());
    const Admission& a = admission.value();
    auto cl = ex.parser.content_length();
    if (a.duplicate) {  // a retry of an accepted update: idempotent
      if (cl && *cl > a.bodyLimit)
        ex.keepAlive = false;
      else
        co_await drainOrClose(ex);
      const nlohmann::json body = {{"accepted", true}, {"round", a.round}, {"duplicate", true}};
      co_return co_await writeJson(ex, http::status::accepted, body);
    }
    auto fail = [&](const Error& e) {
      jobs.abandon(id, meta.value());
      return writeError(ex, e);
    };
    if (cl && *cl > a.bodyLimit) {
      ex.keepAlive = false;
      co_return co_await fail(makeError(413, "body_too_large",
                                        "update body of " + std::to_string(*cl) +
                                            " bytes is larger than the model allows (" +
                                            std::to_string(a.bodyLimit) + ")"));
    }
    if ((cl && *cl == 0) || (!cl && ex.parser.is_done()))
      co_return co_await fail(badRequest("malformed_safetensors", "the update body is empty"));
    // Backpressure: the body is read only when the job's leaves have room for it; until then
    // the client's TCP window fills and it waits (bounded by the body timeout).
    {
      asio::steady_timer timer(co_await asio::this_coro::executor);
      const auto giveUp = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(config.bodyTimeoutSeconds));
      for (auto room = jobs.tryStartReceiving(id); room != JobManager::Room::Yes;
           room = jobs.tryStartReceiving(id)) {
        if (std::chrono::steady_clock::now() > giveUp) {
          ex.keepAlive = false;
          co_return co_await fail(
              room == JobManager::Room::StoreFull
                  ? unavailable("store_full",
                                "the object store has no room for this update beside what the "
                                "open rounds' aggregators need; retry later")
                  : unavailable("buffer_full",
                                "the job's aggregators did not catch up within the body timeout"));
        }
        timer.expires_after(std::chrono::milliseconds(1));
        beast::error_code ec;
        co_await timer.async_wait(asio::redirect_error(use_awaitable, ec));
      }
    }
    ScopeExit received([&] { jobs.doneReceiving(id); });
    const uint64_t capacity = cl ? *cl : a.bodyLimit;
    auto object = store.allocate(capacity, ObjectKind::Update, kAgentInstance);
    if (!object) {
      co_await drainOrClose(ex);
      co_return co_await fail(object.error());
    }
    co_await maybeContinue(ex);
    ObjectRef update = object.value();
    const auto t0 = std::chrono::steady_clock::now();
    update.prefault(/*forWrite=*/true);
    auto got = co_await readBodyInto(ex, update.data(), capacity);  // socket -> store, once
    const auto t1 = std::chrono::steady_clock::now();
    if (!got) {
      store.release(update.handle());
      co_return co_await fail(got.error());
    }
    update.setLength(got.value());
    auto round = jobs.commit(id, meta.value(), update);
    using Ms = std::chrono::duration<double, std::milli>;
    const double readMs = Ms(t1 - t0).count(),
                 commitMs = Ms(std::chrono::steady_clock::now() - t1).count();
    metrics.ingestSeconds((readMs + commitMs) / 1e3);
    LIFL_DEBUG("update " << meta.value().id << ": " << got.value() << " bytes read in " << readMs
                         << " ms, validated and routed in " << commitMs << " ms");
    if (!round) {
      store.release(update.handle());
      co_return co_await fail(round.error());
    }
    const nlohmann::json body = {{"accepted", true}, {"round", round.value()}};
    co_await writeJson(ex, http::status::accepted, body);
  }

  /// POST /v1/tokens {"job", "client", "ttl_seconds"?}: a client token (docs/security.md).
  template <class S>
  awaitable<void> issueToken(Exchange<S>& ex) {
    auto body = co_await readBodyString(ex, 64 << 10);
    if (!body) co_return co_await writeError(ex, body.error());
    auto token = access.issue(body.value());
    if (!token) co_return co_await writeError(ex, token.error());
    co_await writeJson(ex, http::status::created, token.value());
  }

  // ---------------------------------------------------------------- cluster mode
  /// The jobs API of a clustered agent is the controller's: forwarded as it came.
  template <class S>
  awaitable<void> forwardToController(Exchange<S>& ex) {
    auto body = co_await readBodyString(ex, kMaxForwardedBytes);
    if (!body) co_return co_await writeError(ex, body.error());
    const auto& req = ex.parser.get();
    auto answer = hooks.cluster->toController(
        std::string_view(req.method_string().data(), req.method_string().size()),
        std::string(req.target()), body.value(), std::string(header(ex.parser, "content-type")),
        header(ex.parser, "authorization"));
    if (!answer) co_return co_await writeError(ex, answer.error());
    std::vector<std::pair<std::string, std::string>> headers;
    for (const char* h : {"etag", "lifl-round"})
      if (auto v = answer.value().header(h); !v.empty()) headers.emplace_back(h, v);
    // Named, not a temporary of the co_await's full expression: GCC 12 destroys such a
    // temporary twice (a double free found by cluster_auth_test).
    std::string type = answer.value().header("content-type");
    if (type.empty()) type = "application/json";
    co_await write(ex, static_cast<http::status>(answer.value().status),
                   std::move(answer.value().body), type, std::move(headers));
  }

  template <class S>
  awaitable<void> clusterCommand(Exchange<S>& ex, const std::string& id, bool close) {
    auto body = co_await readBodyString(ex, kMaxJobSpecBytes);
    if (!body) co_return co_await writeError(ex, body.error());
    nlohmann::json doc = nlohmann::json::parse(body.value(), nullptr, false);
    if (!doc.is_object())
      co_return co_await writeError(ex, badRequest("malformed_json", "the body is not JSON"));
    auto done = close ? jobs.clusterClose(id, doc) : jobs.clusterSync(id, doc);
    if (!done) co_return co_await writeError(ex, done.error());
    co_await write(ex, http::status::no_content, "", "application/json");
  }

  /// A partial from another node's agent: read into this node's store, handed to the top.
  template <class S>
  awaitable<void> receivePartial(Exchange<S>& ex, const std::string& id) {
    const std::string target(ex.parser.get().target());
    const auto round = parseUnsigned(queryParam(target, "round"));
    const auto epoch = parseUnsigned(queryParam(target, "epoch"));
    const std::string key = queryParam(target, "from") + ":" + queryParam(target, "partial");
    if (!round || !epoch)
      co_return co_await rejectBeforeBody(ex, badRequest("bad_query", "round and epoch needed"));
    auto bound = jobs.admitRemotePartial(id, static_cast<uint32_t>(*round),
                                         static_cast<uint32_t>(*epoch), key);
    if (!bound) co_return co_await rejectBeforeBody(ex, bound.error());
    if (!bound.value()) {  // delivered before: the sender missed our answer
      co_await drainOrClose(ex);
      const nlohmann::json duplicate = {{"duplicate", true}};
      co_return co_await writeJson(ex, http::status::ok, duplicate);
    }
    auto cl = ex.parser.content_length();
    if (!cl || *cl > *bound.value())
      co_return co_await rejectBeforeBody(
          ex, makeError(413, "body_too_large", "a partial needs a Content-Length within bounds"));
    auto object = store.allocate(*cl, ObjectKind::Partial, kAgentInstance);
    if (!object) co_return co_await rejectBeforeBody(ex, object.error());
    ObjectRef partial = object.value();
    partial.prefault(/*forWrite=*/true);
    auto got = co_await readBodyInto(ex, partial.data(), *cl);
    Result<void> delivered =
        got ? (partial.setLength(got.value()),
               jobs.deliverRemotePartial(id, static_cast<uint32_t>(*round),
                                         static_cast<uint32_t>(*epoch), key, partial))
            : Result<void>(got.error());
    if (!delivered) {
      store.release(partial.handle());
      co_return co_await writeError(ex, delivered.error());
    }
    hooks.cluster->countReceived(*cl);
    const nlohmann::json answer = {{"delivered", true}};
    co_await writeJson(ex, http::status::ok, answer);
  }

  template <class S>
  awaitable<void> dispatchCluster(Exchange<S>& ex, const std::vector<std::string>& path) {
    ex.route = "cluster";
    const auto method = ex.parser.get().method();
    if (path.size() == 4 && path[2] == "llm" && path[3] == "prefill" && method == http::verb::post)
      co_return co_await clusterPrefill(ex);
    if (!hooks.cluster || path.size() < 4 || path[2] != "jobs")
      co_return co_await rejectBeforeBody(ex, notFound("not_found", "no such endpoint"));
    const std::string& id = path[3];
    if (path.size() == 4 && method == http::verb::put)
      co_return co_await clusterCommand(ex, id, false);
    if (path.size() == 4 && method == http::verb::get) {
      auto s = jobs.status(id);
      if (!s) co_return co_await writeError(ex, s.error());
      co_return co_await writeJson(ex, http::status::ok, s.value());
    }
    if (path.size() == 5 && path[4] == "close" && method == http::verb::post)
      co_return co_await clusterCommand(ex, id, true);
    if (path.size() == 5 && path[4] == "partials" && method == http::verb::post)
      co_return co_await receivePartial(ex, id);
    co_await rejectBeforeBody(ex, notFound("not_found", "no such endpoint"));
  }

  // ---------------------------------------------------------------- functions
  template <class S>
  awaitable<void> invokeFunction(Exchange<S>& ex, const std::string& name) {
    ex.route = "functions";
    auto first = chains.entry(name);
    if (!first) co_return co_await rejectBeforeBody(ex, first.error());
    const bool structured =
        header(ex.parser, "content-type").starts_with("application/cloudevents+json");
    nlohmann::json attributes;
    std::optional<ObjectRef> event;
    if (structured) {
      auto body = co_await readBodyString(ex, config.maxEventBytes);
      if (!body) co_return co_await writeError(ex, body.error());
      nlohmann::json doc = nlohmann::json::parse(body.value(), nullptr, false);
      if (doc.is_discarded() || !doc.is_object())
        co_return co_await writeError(
            ex, badRequest("malformed_event", "structured event is not a JSON object"));
      std::string data;
      if (doc.contains("data_base64")) {
        auto decoded = doc["data_base64"].is_string()
                           ? base64Decode(doc["data_base64"].get<std::string>())
                           : std::nullopt;
        if (!decoded)
          co_return co_await writeError(ex,
                                        badRequest("malformed_event", "data_base64 is not base64"));
        data = std::move(*decoded);
      } else if (doc.contains("data")) {
        data = doc["data"].is_string() ? doc["data"].get<std::string>() : doc["data"].dump();
      }
      doc.erase("data");
      doc.erase("data_base64");
      attributes = std::move(doc);
      if (auto e = checkAttributes(attributes); !e) co_return co_await writeError(ex, e.error());
      auto made = makeEvent(store, first.value(), attributes, std::string_view(data));
      if (!made) co_return co_await writeError(ex, made.error());
      event = made.value();
    } else {
      for (const auto& field : ex.parser.get()) {
        std::string key(field.name_string());
        for (auto& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (key.rfind("ce-", 0) == 0) attributes[key.substr(3)] = std::string(field.value());
      }
      if (auto ct = header(ex.parser, "content-type"); !ct.empty())
        attributes["datacontenttype"] = std::string(ct);
      if (auto e = checkAttributes(attributes); !e)
        co_return co_await rejectBeforeBody(ex, e.error());
      auto cl = ex.parser.content_length();
      if (cl && *cl > config.maxEventBytes) {
        ex.keepAlive = false;
        co_return co_await writeError(ex,
                                      makeError(413, "body_too_large", "event data is too large"));
      }
      if (cl) {  // the body goes straight into the event object
        auto made = makeEvent(store, first.value(), attributes, *cl);
        if (!made) co_return co_await rejectBeforeBody(ex, made.error());
        co_await maybeContinue(ex);
        auto got = co_await readBodyInto(ex, made.value().second, *cl);
        if (!got) {
          store.release(made.value().first.handle());
          co_return co_await writeError(ex, got.error());
        }
        event = made.value().first;
      } else {
        auto body = co_await readBodyString(ex, config.maxEventBytes);
        if (!body) co_return co_await writeError(ex, body.error());
        auto made = makeEvent(store, first.value(), attributes, std::string_view(body.value()));
        if (!made) co_return co_await writeError(ex, made.error());
        event = made.value();
      }
    }

    auto reply = co_await callChain(name, *event);
    if (!reply) co_return co_await writeError(ex, reply.error());
    co_await answerChain(ex, reply.value(), structured);
  }

  /// Invokes chain `name` with `event` and waits for its answer (a Reply, a Failure, or the
  /// last hop's event), up to chainTimeoutSeconds.
  awaitable<Result<Descriptor>> callChain(const std::string& name, const ObjectRef& event) {
    auto call = std::make_shared<ChainCall>();
    auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
    timer->expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(config.chainTimeoutSeconds)));
    call->wake = [timer] { asio::post(timer->get_executor(), [timer] { timer->cancel(); }); };
    auto correlation = chains.invoke(name, event, call);
    if (!correlation) co_return correlation.error();
    bool done = false;
    {
      std::lock_guard lock(call->mutex);
      done = call->done;
    }
    if (!done) {
      beast::error_code ec;
      co_await timer->async_wait(asio::redirect_error(use_awaitable, ec));
      std::lock_guard lock(call->mutex);
      done = call->done;
    }
    if (!done) {
      chains.forget(correlation.value());
      co_return makeError(504, "function_timeout", "the chain did not answer in time");
    }
    co_return call->reply;
  }

  static Result<void> checkAttributes(const nlohmann::json& a) {
    for (const char* k : {"id", "source", "type"})
      if (!a.contains(k) || !a[k].is_string() || a[k].get<std::string>().empty())
        return badRequest("bad_header", std::string("the event needs a ") + k + " attribute");
    if (!a.contains("specversion") || a["specversion"] != "1.0")
      return badRequest("bad_header", "the event's specversion must be 1.0");
    return success();
  }

  template <class S>
  awaitable<void> answerChain(Exchange<S>& ex, const Descriptor& reply, bool structured) {
    auto object = store.resolve(reply);
    if (!object)
      co_return co_await writeError(ex, internal("lost_reply", "the chain's reply object is gone"));
    auto view = readEvent(object.value());
    if (!view) {
      store.release(object.value().handle());
      co_return co_await writeError(ex, view.error());
    }
    EventView& ev = view.value();
    if (reply.kind == DescriptorKind::Failure) {
      Error e = makeError(ev.attributes.value("status", 500),
                          ev.attributes.value("error", "function_failed"),
                          ev.attributes.value("detail", "a function of the chain failed"));
      store.release(object.value().handle());
      co_return co_await writeError(ex, e);
    }
    std::string data(ev.text());
    nlohmann::json attributes = ev.attributes;
    store.release(object.value().handle());
    if (structured) {
      attributes["data"] = data;
      co_return co_await write(ex, http::status::ok, attributes.dump(),
                               "application/cloudevents+json");
    }
    std::vector<std::pair<std::string, std::string>> headers;
    std::string contentType = "application/octet-stream";
    for (auto& [k, v] : attributes.items()) {
      if (k == "datacontenttype")
        contentType = v.is_string() ? v.template get<std::string>() : v.dump();
      else
        headers.emplace_back("ce-" + k, v.is_string() ? v.template get<std::string>() : v.dump());
    }
    co_await write(ex, http::status::ok, std::move(data), contentType, std::move(headers));
  }

  // ---------------------------------------------------------------- LLM completions
  /// GET /v1/models: OpenAI's list of the models POST /v1/completions answers here, this
  /// node's and, in a cluster, those it relays to.
  nlohmann::json listModels() const {
    std::set<std::string> names;
    if (!servedModelName.empty()) names.insert(servedModelName);
    if (hooks.cluster)
      for (const auto& route : hooks.cluster->modelRoutes("")) names.insert(route.model);
    nlohmann::json data = nlohmann::json::array();
    for (const auto& name : names)
      data.push_back({{"id", name}, {"object", "model"}, {"owned_by", "lifl"}});
    return {{"object", "list"}, {"data", data}};
  }
  /// `routes` ordered by load: the completions in flight at each node's last heartbeat,
  /// plus those sent there from here since (SentTo), so that a burst spreads at once.
  void byLoad(std::vector<ModelRoute>& routes) {
    std::lock_guard lock(relayMutex);
    std::stable_sort(routes.begin(), routes.end(), [&](const auto& a, const auto& b) {
      return a.inFlight + relayedTo[a.node] < b.inFlight + relayedTo[b.node];
    });
  }
  /// A completion (or a prefill) sent from here to `node`, counted while it lasts.
  struct SentTo {
    Impl& gateway;
    std::string node;
    SentTo(Impl& g, std::string n) : gateway(g), node(std::move(n)) {
      std::lock_guard lock(gateway.relayMutex);
      gateway.relayedTo[node]++;
    }
    ~SentTo() {
      std::lock_guard lock(gateway.relayMutex);
      gateway.relayedTo[node]--;
    }
  };
  /// Counts a completion being served here (heartbeats report it: completionsInFlight).
  struct Serving {
    std::atomic<uint32_t>& n;
    explicit Serving(std::atomic<uint32_t>& c) : n(c) { n++; }
    ~Serving() { n--; }
  };

  /// A completion relayed to the node with the fewest in flight (byLoad), the next one where
  /// a node cannot be reached.
  template <class S>
  awaitable<void> relayToNode(Exchange<S>& ex, std::vector<ModelRoute> routes, std::string body) {
    byLoad(routes);
    relay::Request request{std::move(body),
                           {{relay::kRelayedHeader, hooks.cluster->config().nodeName}},
                           ex.parser.get().version(),
                           ex.keepAlive,
                           seconds(kRelayConnectSeconds),
                           seconds(config.chainTimeoutSeconds)};
    if (auto auth = header(ex.parser, "authorization"); !auth.empty())
      request.headers.emplace_back("authorization", std::string(auth));
    for (const auto& route : routes) {
      const SentTo sent(*this, route.node);
      const relay::Outcome out = co_await relay::relayCompletion(
          ex.stream, route.url, relayTls ? &*relayTls : nullptr, request);
      if (!out.answered) {
        LIFL_WARN("completion: node " << route.node << " at " << route.url << " did not answer ("
                                      << out.why << "); trying the next");
        continue;
      }
      ex.status = out.status;
      ex.keepAlive = ex.keepAlive && out.keepAlive;
      co_return;
    }
    co_await writeError(ex,
                        unavailable("model_unavailable", "no node that serves the model answered"));
  }

  /// The event a completion's body travels down the "llm" chain in.
  inline static const nlohmann::json kCompletionAttributes = {{"specversion", "1.0"},
                                                              {"id", "completion"},
                                                              {"source", "/v1/completions"},
                                                              {"type", "dev.lifl.completion"}};

  /// The nodes that serve `model` ("": any) in the role `runs` names: ModelRoute::decodes
  /// (they answer completions) or ModelRoute::prefills.
  std::vector<ModelRoute> routesThat(bool (ModelRoute::*runs)() const,
                                     const std::string& model) const {
    auto routes = hooks.cluster->modelRoutes(model);
    std::erase_if(routes, [&](const ModelRoute& r) { return !(r.*runs)(); });
    return routes;
  }

  /// A decode node's prompt prefilled on a prefill node of the cluster (the one with the
  /// fewest in flight, byLoad; the next where one cannot be reached or fails): its hand-off
  /// (the request, the first token, the generator, the KV cache), an event object for
  /// `decode`, the local decode stage. The request's own errors come back as its error.
  awaitable<Result<ObjectRef>> prefillElsewhere(const std::string& body, InstanceId decode) {
    const Error none =
        unavailable("model_unavailable",
                    "no prefill node of this cluster for model " + servedModelName + " answered");
    if (!hooks.cluster) co_return none;
    auto routes = routesThat(&ModelRoute::prefills, servedModelName);
    byLoad(routes);
    const relay::Request request{
        body,
        {{"authorization", "Bearer " + hooks.cluster->config().clusterToken}},
        11,
        true,
        seconds(kRelayConnectSeconds),
        seconds(config.chainTimeoutSeconds)};
    for (const auto& route : routes) {
      const SentTo sent(*this, route.node);
      // The hand-off is read from the socket straight into this node's store.
      std::optional<ObjectRef> handoff;
      Error unread = internal("no_handoff", "the prefill node's answer has no length");
      const relay::Sink into = [&](uint64_t length) -> std::byte* {
        auto made = store.allocate(length, ObjectKind::Event, decode);
        if (!made) {
          unread = made.error();
          return nullptr;
        }
        handoff = made.value();
        return handoff->data();
      };
      HttpResponse got;
      const std::string target = "/v1/cluster/llm/prefill";
      const relay::Outcome out = co_await relay::fetch(
          route.url, target, relayTls ? &*relayTls : nullptr, request, got, into);
      if (handoff && (!out.answered || !readEvent(*handoff))) {
        store.release(handoff->handle());
        handoff.reset();
        unread = makeError(502, "bad_handoff", "a prefill node's hand-off is not an event");
      }
      if (!out.answered || got.status >= 500) {
        LIFL_WARN("completion: prefill node " << route.node << " at " << route.url << " failed ("
                                              << (out.answered ? errorOf(got).toString() : out.why)
                                              << "); trying the next");
        continue;
      }
      if (got.status != 200) co_return errorOf(got);
      if (!handoff) co_return unread;
      co_return *handoff;
    }
    co_return none;
  }

  /// POST /v1/cluster/llm/prefill (a decode node's call): the completion's prompt prefilled
  /// here, answered with the hand-off object as it would have gone to a decode stage
  /// (application/octet-stream), or the request's JSON error.
  template <class S>
  awaitable<void> clusterPrefill(Exchange<S>& ex) {
    auto first = chains.entry(kLlmChain);
    if (!first || servedRole != "prefill")
      co_return co_await rejectBeforeBody(
          ex,
          notFound("no_model", "this node prefills no model (lifl agent --model-role prefill)"));
    auto body = co_await readBodyString(ex, config.maxEventBytes);
    if (!body) co_return co_await writeError(ex, body.error());
    const Serving serving(completionsInFlight);  // the decode nodes pick prefill nodes by it
    auto made =
        makeEvent(store, first.value(), kCompletionAttributes, std::string_view(body.value()));
    if (!made) co_return co_await writeError(ex, made.error());
    const std::string chain = kLlmChain;  // named: GCC 12 and a co_await's temporaries
    auto reply = co_await callChain(chain, made.value());
    if (!reply) co_return co_await writeError(ex, reply.error());
    if (reply.value().kind == DescriptorKind::Failure)
      co_return co_await answerChain(ex, reply.value(), false);
    auto object = store.resolve(reply.value());
    if (!object)
      co_return co_await writeError(ex, internal("lost_reply", "the hand-off object is gone"));
    const HeaderList none;
    co_await writeInPlace(ex, object.value().data(), object.value().size(), none);
    store.release(object.value().handle());
  }

  // POST /v1/completions (API.md): the request goes as an event down the chain
  // llm.prefill -> llm.decode. Streamed answers are server-sent events: one per token
  // (the decode stage's Stream pieces), a last one with finish_reason and usage, and
  // "data: [DONE]". Errors found before the first token are API.md's JSON error.
  template <class S>
  awaitable<void> completions(Exchange<S>& ex) {
    ex.route = "completions";
    auto first = chains.entry(kLlmChain);
    // In a cluster, a request for a model this node does not serve goes to a node that does
    // (not one relayed here already).
    const bool mayRelay = hooks.cluster && header(ex.parser, relay::kRelayedHeader).empty();
    if (!first && !mayRelay)
      co_return co_await rejectBeforeBody(
          ex, notFound("no_model", "this server has no model: start it with lifl up --model DIR"));
    auto body = co_await readBodyString(ex, config.maxEventBytes);
    if (!body) co_return co_await writeError(ex, body.error());
    nlohmann::json doc = nlohmann::json::parse(body.value(), nullptr, false);
    if (doc.is_discarded() || !doc.is_object())
      co_return co_await writeError(ex,
                                    badRequest("invalid_request", "the body is not a JSON object"));
    const auto modelField = doc.find("model");
    const std::string model = modelField != doc.end() && modelField->is_string()
                                  ? modelField->get<std::string>()
                                  : std::string();
    if (mayRelay && (!first || (!model.empty() && model != servedModelName))) {
      auto routes = routesThat(&ModelRoute::decodes, model);
      if (!routes.empty()) co_return co_await relayToNode(ex, std::move(routes), body.value());
      if (!first) {
        // Named: GCC 12 destroys a temporary of a co_await's full expression twice.
        Error none = model.empty() ? notFound("no_model", "no node of this cluster serves a model")
                                   : notFound("model_not_found",
                                              "no node of this cluster serves model " + model);
        co_return co_await writeError(ex, std::move(none));
      }
    }
    if (servedRole == "prefill") {  // a node that only prefills: a decode node answers
      auto routes =
          mayRelay ? routesThat(&ModelRoute::decodes, servedModelName) : std::vector<ModelRoute>{};
      if (routes.empty()) {
        Error none = unavailable("model_unavailable",
                                 "no decode node of this cluster serves model " + servedModelName);
        co_return co_await writeError(ex, std::move(none));
      }
      co_return co_await relayToNode(ex, std::move(routes), body.value());
    }
    const Serving serving(completionsInFlight);
    auto streamField = doc.find("stream");
    const bool stream =
        streamField != doc.end() && streamField->is_boolean() && streamField->get<bool>();
    const auto received = std::chrono::steady_clock::now();
    std::optional<ObjectRef> event;
    if (servedRole == "decode") {  // the prompt is prefilled on a prefill node
      auto handoff = co_await prefillElsewhere(body.value(), first.value());
      if (!handoff) co_return co_await writeError(ex, handoff.error());
      event = handoff.value();
    } else {
      auto made =
          makeEvent(store, first.value(), kCompletionAttributes, std::string_view(body.value()));
      if (!made) co_return co_await writeError(ex, made.error());
      event = made.value();
    }

    auto call = std::make_shared<ChainCall>();
    auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
    call->wake = [timer] { asio::post(timer->get_executor(), [timer] { timer->cancel(); }); };
    auto correlation = chains.invoke("llm", *event, call);
    if (!correlation) co_return co_await writeError(ex, correlation.error());
    const auto timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(config.chainTimeoutSeconds));
    auto lastProgress = std::chrono::steady_clock::now();
    bool headersSent = false;
    std::optional<std::chrono::steady_clock::time_point> firstPiece;
    http::response<http::empty_body> sse{http::status::ok, ex.parser.get().version()};
    http::response_serializer<http::empty_body> serializer{sse};
    auto sendEvent = [&](std::string text) -> awaitable<bool> {
      beast::error_code ec;
      if (!headersSent) {
        headersSent = true;
        ex.status = 200;
        sse.set(http::field::server, "lifl");
        sse.set(http::field::content_type, "text/event-stream");
        sse.set(http::field::cache_control, "no-cache");
        sse.chunked(true);
        sse.keep_alive(ex.keepAlive);
        co_await http::async_write_header(ex.stream, serializer,
                                          asio::redirect_error(use_awaitable, ec));
        if (ec) co_return false;
      }
      co_await asio::async_write(ex.stream, http::make_chunk(asio::buffer(text)),
                                 asio::redirect_error(use_awaitable, ec));
      co_return !ec;
    };
    for (;;) {
      std::vector<Descriptor> pieces;
      bool done = false;
      Descriptor reply{};
      {
        std::lock_guard lock(call->mutex);
        pieces.swap(call->pieces);
        done = call->done;
        reply = call->reply;
      }
      for (const auto& p : pieces) {
        auto object = store.resolve(p);
        if (!object) continue;
        auto view = readEvent(object.value());
        std::string data = view ? std::string(view.value().text()) : std::string();
        store.release(object.value().handle());
        if (!firstPiece) firstPiece = std::chrono::steady_clock::now();
        if (!co_await sendEvent("data: " + data + "\n\n")) {
          ex.keepAlive = false;  // the client left; the chain finishes on its own
          chains.forget(correlation.value());
          co_return;
        }
      }
      if (!pieces.empty()) lastProgress = std::chrono::steady_clock::now();
      if (done) {
        auto object = store.resolve(reply);
        if (!object)
          co_return co_await writeError(ex, internal("lost_reply", "the completion is gone"));
        auto view = readEvent(object.value());
        std::string data = view ? std::string(view.value().text()) : std::string();
        nlohmann::json attrs = view ? view.value().attributes : nlohmann::json::object();
        store.release(object.value().handle());
        if (reply.kind == DescriptorKind::Failure) {
          Error e = makeError(attrs.value("status", 500), attrs.value("error", "function_failed"),
                              attrs.value("detail", "the model failed"));
          if (!headersSent) co_return co_await writeError(ex, e);
          (void)co_await sendEvent("data: " + e.toJson() + "\n\n");
        } else {
          nlohmann::json completion = nlohmann::json::parse(data, nullptr, false);
          recordCompletion(completion, attrs, received);
          if (!stream) co_return co_await write(ex, http::status::ok, data, "application/json");
          // The last event: no text (every token was streamed), the reason and the usage.
          if (!completion.is_discarded() && completion.contains("choices")) {
            completion["choices"][0]["text"] = "";
            completion["choices"][0]["token_ids"] = nlohmann::json::array();
          }
          (void)co_await sendEvent(
              "data: " + completion.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
              "\n\n");
          (void)co_await sendEvent("data: [DONE]\n\n");
        }
        beast::error_code ec;
        co_await asio::async_write(ex.stream, http::make_chunk_last(),
                                   asio::redirect_error(use_awaitable, ec));
        if (ec) ex.keepAlive = false;
        co_return;
      }
      if (std::chrono::steady_clock::now() - lastProgress > timeout) {
        chains.forget(correlation.value());
        if (!headersSent)
          co_return co_await writeError(
              ex, makeError(504, "function_timeout", "the model did not answer in time"));
        ex.keepAlive = false;  // a stream cut short: the client sees no [DONE]
        co_return;
      }
      // Woken by the next piece; a short cap covers a wake-up that came before the wait.
      timer->expires_after(std::chrono::milliseconds(50));
      beast::error_code ec;
      co_await timer->async_wait(asio::redirect_error(use_awaitable, ec));
    }
  }

  /// Time to first token, inter-token latency and tokens generated, from the decode stage's
  /// steady-clock stamps (the same clock in every process of the node).
  void recordCompletion(const nlohmann::json& completion, const nlohmann::json& attrs,
                        std::chrono::steady_clock::time_point received) {
    if (completion.is_discarded() || !completion.contains("usage")) return;
    const uint64_t tokens = completion["usage"].value("completion_tokens", 0ull);
    const double receivedNs = static_cast<double>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(received.time_since_epoch()).count());
    const double firstNs = attrs.value("first_token_ns", 0.0);
    const double finishedNs = attrs.value("finished_ns", 0.0);
    if (firstNs <= 0 || finishedNs <= 0) return;
    metrics.llmCompletion(std::max(0.0, (firstNs - receivedNs) / 1e9),
                          tokens > 1 ? (finishedNs - firstNs) / 1e9 / double(tokens - 1) : 0.0,
                          tokens, (finishedNs - receivedNs) / 1e9);
  }

  // ---------------------------------------------------------------- routing
  template <class S>
  awaitable<void> dispatch(Exchange<S>& ex) {
    const auto method = ex.parser.get().method();
    const auto target = ex.parser.get().target();
    const auto path = splitPath(std::string_view(target.data(), target.size()));
    auto methodNotAllowed = [&] {
      return rejectBeforeBody(
          ex, makeError(405, "method_not_allowed", "method not allowed on this path"));
    };
    if (path.size() == 1 && (path[0] == "livez" || path[0] == "readyz")) {
      ex.route = "health";
      const bool ok = path[0] == "livez" || !hooks.ready || hooks.ready();
      const nlohmann::json body = {{"status", ok ? "ok" : "starting"}};
      co_return co_await writeJson(ex, ok ? http::status::ok : http::status::service_unavailable,
                                   body);
    }
    if (path.size() == 1 && path[0] == "metrics") {
      ex.route = "metrics";
      if (hooks.refreshMetrics) hooks.refreshMetrics();
      co_return co_await write(ex, http::status::ok, metrics.serialize(),
                               "text/plain; version=0.0.4");
    }
    if (path.size() >= 2 && path[0] == "v1" && path[1] == "cluster") {
      if (auto ok = access.requireCluster(header(ex.parser, "authorization")); !ok)
        co_return co_await refuseUnread(ex, ok.error());
      co_return co_await dispatchCluster(ex, path);
    }
    if (path.empty() || path[0] != "v1")
      co_return co_await rejectBeforeBody(ex, notFound("not_found", "no such endpoint"));
    // The key client tokens are checked with is public: clients and nodes may verify them.
    if (path.size() == 3 && path[1] == "tokens" && path[2] == "public-key") {
      ex.route = "tokens";
      if (method != http::verb::get) co_return co_await methodNotAllowed();
      if (!access.enabled())
        co_return co_await rejectBeforeBody(
            ex, notFound("auth_disabled", "tokens exist only when security.auth is on"));
      const nlohmann::json key = {{"algorithm", "Ed25519"}, {"public_key", access.publicKey()}};
      co_return co_await writeJson(ex, http::status::ok, key);
    }
    // Credentials first, from the headers alone (access_policy.h): updates check theirs in
    // pushUpdate, where ce-source is at hand.
    const std::string_view authorization = header(ex.parser, "authorization");
    const bool isJobs = path.size() >= 3 && path[1] == "jobs";
    const bool isUpdate = isJobs && path.size() == 4 && path[3] == "updates";
    const bool isModelRead =
        isJobs && method == http::verb::get && path.size() == 4 && path[3] == "model";
    const bool isRead = isModelRead || (isJobs && method == http::verb::get && path.size() == 3);
    // A member passes the jobs API (but updates and the model) and tokens to the controller
    // with the caller's credential, which the controller checks.
    const bool forwarded = hooks.cluster && path.size() >= 2 &&
                           ((path[1] == "jobs" && !isUpdate && !isModelRead) ||
                            (path[1] == "tokens" && path.size() == 2));
    if (!forwarded && !isUpdate) {
      auto ok = isRead ? access.requireReader(authorization, path[2])
                       : access.requireAdmin(authorization);
      if (!ok) co_return co_await refuseUnread(ex, ok.error());
    }
    if (path.size() == 2 && path[1] == "tokens") {
      ex.route = "tokens";
      if (method != http::verb::post) co_return co_await methodNotAllowed();
      if (forwarded) co_return co_await forwardToController(ex);
      co_return co_await issueToken(ex);
    }
    if (forwarded) {
      ex.route = "jobs";
      co_return co_await forwardToController(ex);
    }
    if (path.size() >= 2 && path[0] == "v1" && path[1] == "jobs") {
      ex.route = "jobs";
      if (path.size() == 2) {
        if (method == http::verb::post) co_return co_await createJob(ex);
        if (method == http::verb::get)
          co_return co_await writeJson(ex, http::status::ok, jobs.list());
        co_return co_await methodNotAllowed();
      }
      const std::string& id = path[2];
      if (path.size() == 3) {
        if (method == http::verb::get) {
          auto s = jobs.status(id);
          if (!s) co_return co_await writeError(ex, s.error());
          co_return co_await writeJson(ex, http::status::ok, s.value());
        }
        if (method == http::verb::delete_) {
          auto r = jobs.cancel(id);
          if (!r) co_return co_await writeError(ex, r.error());
          co_return co_await write(ex, http::status::no_content, "", "application/json");
        }
        co_return co_await methodNotAllowed();
      }
      if (path.size() == 4 && path[3] == "model") {
        ex.route = "model";
        if (method == http::verb::get) co_return co_await getModel(ex, id);
        if (method == http::verb::put) co_return co_await putModel(ex, id);
        co_return co_await methodNotAllowed();
      }
      if (path.size() == 4 && path[3] == "updates") {
        if (method == http::verb::post) co_return co_await pushUpdate(ex, id);
        co_return co_await methodNotAllowed();
      }
    }
    if (path.size() == 2 && path[0] == "v1" && path[1] == "instances" && hooks.instances) {
      ex.route = "instances";
      if (method != http::verb::get) co_return co_await methodNotAllowed();
      co_return co_await writeJson(ex, http::status::ok, hooks.instances());
    }
    if (path.size() == 2 && path[0] == "v1" && path[1] == "store" && hooks.store) {
      ex.route = "store";
      if (method != http::verb::get) co_return co_await methodNotAllowed();
      co_return co_await writeJson(ex, http::status::ok, hooks.store());
    }
    if (path.size() == 2 && path[0] == "v1" && path[1] == "models") {
      ex.route = "completions";
      if (method != http::verb::get) co_return co_await methodNotAllowed();
      co_return co_await writeJson(ex, http::status::ok, listModels());
    }
    if (path.size() == 2 && path[0] == "v1" && path[1] == "completions") {
      if (method == http::verb::post) co_return co_await completions(ex);
      co_return co_await methodNotAllowed();
    }
    if (path.size() == 3 && path[0] == "v1" && path[1] == "functions") {
      if (method == http::verb::post) co_return co_await invokeFunction(ex, path[2]);
      co_return co_await methodNotAllowed();
    }
    co_await rejectBeforeBody(ex, notFound("not_found", "no such endpoint"));
  }

  /// One connection: TLS first where it is configured, then its requests one by one.
  awaitable<void> session(tcp::socket socket) {
    struct Count {
      std::atomic<uint32_t>& n;
      ~Count() { n--; }
    } count{connections};
    socket.set_option(tcp::no_delay(true));
    const bool overloaded = connections > config.maxConnections;
    if (!tls) {
      beast::tcp_stream stream(std::move(socket));
      const bool unread = co_await serve(stream, overloaded);
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
      if (unread) co_await discardRest(stream);
      co_return;
    }
    beast::ssl_stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *tls);
    if (!co_await acceptTls(stream, seconds(config.headerTimeoutSeconds))) co_return;
    if (co_await serve(stream, overloaded)) co_await discardRest(stream);
    co_await closeTls(stream);
  }

  /// After an answer given before a request's body was read (a refusal), the rest of the body
  /// is read and dropped, bounded in time and bytes, before the connection closes: closed at
  /// once, the kernel would reset it, and a client still sending (as most do, before they
  /// read) would lose the answer. (nginx's lingering close.)
  template <class Stream>
  awaitable<void> discardRest(Stream& stream) {
    constexpr uint64_t kMaxBytes = 1ull << 30;
    std::vector<char> sink(64 << 10);
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(5));
    for (uint64_t total = 0; total < kMaxBytes;) {
      beast::error_code ec;
      const size_t n = co_await stream.async_read_some(asio::buffer(sink),
                                                       asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      total += n;
    }
  }

  static std::chrono::steady_clock::duration seconds(double s) {
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(s));
  }

  /// Serves the connection's requests. @return whether it ended on an answer given before
  /// its request's body was read
  template <class Stream>
  awaitable<bool> serve(Stream& stream, bool overloaded) {
    beast::flat_buffer buffer;
    auto& lowest = beast::get_lowest_layer(stream);
    for (;;) {
      Parser parser;
      parser.header_limit(64 * 1024);
      parser.body_limit(std::numeric_limits<std::uint64_t>::max());
      lowest.expires_after(seconds(config.headerTimeoutSeconds));
      beast::error_code ec;
      co_await http::async_read_header(stream, buffer, parser,
                                       asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (ec != http::error::end_of_stream && ec != asio::error::eof &&
            ec != beast::error::timeout && ec != asio::error::connection_reset &&
            ec != asio::error::operation_aborted && ec != asio::ssl::error::stream_truncated) {
          Exchange<Stream> ex{stream, buffer, parser, false};
          co_await writeError(ex, badRequest("malformed_request",
                                             "cannot parse the HTTP request: " + ec.message()));
        }
        break;
      }
      lowest.expires_after(seconds(config.bodyTimeoutSeconds));
      Exchange<Stream> ex{stream, buffer, parser, parser.get().keep_alive()};
      if (overloaded) {
        ex.keepAlive = false;
        co_await writeError(
            ex, unavailable("too_many_connections", "the gateway is at its connection limit"));
        break;
      }
      co_await dispatch(ex);
      metrics.request(ex.route, ex.status);
      if (!ex.keepAlive) co_return !ex.bodyRead && !parser.is_done();
    }
    co_return false;
  }

  awaitable<void> listen() {
    for (;;) {
      beast::error_code ec;
      tcp::socket socket = co_await acceptor->async_accept(asio::make_strand(ioc),
                                                           asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (ec == asio::error::operation_aborted) co_return;
        continue;
      }
      connections++;
      auto executor = socket.get_executor();
      asio::co_spawn(executor, session(std::move(socket)), asio::detached);
    }
  }
};

Gateway::Gateway(const AgentConfig& config, JobManager& jobs, ChainManager& chains,
                 ObjectStore& store, Metrics& metrics, AccessPolicy& access, GatewayHooks hooks)
    : impl_(
          std::make_unique<Impl>(config, jobs, chains, store, metrics, access, std::move(hooks))) {}

Gateway::~Gateway() { stop(); }

Result<uint16_t> Gateway::start() {
  if (impl_->config.gatewayTls.enabled()) {
    LIFL_TRY(ctx, serverTlsContext(impl_->config.gatewayTls, "gateway.tls_"));
    impl_->tls.emplace(std::move(ctx));
  }
  if (impl_->hooks.cluster) {
    LIFL_TRY(ctx, clientTlsContext(impl_->hooks.cluster->config().tls));
    impl_->relayTls.emplace(std::move(ctx));
  }
  beast::error_code ec;
  auto address = asio::ip::make_address(impl_->config.bind, ec);
  if (ec)
    return badRequest("invalid_config",
                      "bind address " + impl_->config.bind + " is not an IP address");
  tcp::endpoint endpoint(address, impl_->config.port);
  auto& acceptor = impl_->acceptor.emplace(impl_->ioc);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return internal("bind_failed", "cannot listen on " + impl_->config.bind + ":" +
                                       std::to_string(impl_->config.port) + ": " + ec.message());
  const uint16_t port = acceptor.local_endpoint().port();
  asio::co_spawn(impl_->ioc, impl_->listen(), asio::detached);
  for (uint32_t i = 0; i < impl_->config.gatewayThreads; ++i)
    impl_->threads.emplace_back([this] { impl_->ioc.run(); });
  return port;
}

uint32_t Gateway::completionsInFlight() const { return impl_->completionsInFlight; }

void Gateway::stop() {
  if (!impl_ || impl_->threads.empty()) return;
  impl_->ioc.stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
}

}  // namespace lifl::dataplane
