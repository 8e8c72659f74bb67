// Hop latency and cost: a descriptor round trip through the LIFL router and a real function
// instance (the `example.echo` function in a `lifl instance` process, so the function
// runtime is included), against, in the same run: the raw sk_msg ping-pong (two sockets in
// the same SOCKHASH, no runtime), a plain loopback TCP ping-pong, the userspace router, the
// DPDK router (rings in hugepages, busy-polled and adaptive), and an HTTP request through
// nginx as a reverse proxy (what a Knative queue-proxy sidecar costs). Round trip = two hops
// (there and back). CPU is user+system of every process involved; CPU us per round trip is
// also CPU-seconds per million round trips.
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bench_util.h"
#include "lifl/common/log.h"
#include "lifl/dataplane/endpoint.h"
#include "lifl/dataplane/object_store.h"
#include "lifl/dataplane/router.h"
#include "lifl/dataplane/supervisor.h"

namespace {

using namespace lifl;
using namespace lifl::dataplane;
using bench::now;
using bench::recvAll;
using bench::sendAll;

constexpr int kWarmup = 2000;

struct Row {
  std::string name;
  double p50 = 0, p99 = 0, rate = 0, cpuUs = 0;
  bool ok = false;
};

/// Times `iters` calls of rtt(); cpu() returns the CPU seconds of everything involved.
Row measure(const std::string& name, int iters, const std::function<bool()>& rtt,
            const std::function<double()>& cpu) {
  Row row{name};
  for (int i = 0; i < kWarmup; ++i)
    if (!rtt()) {
      std::fprintf(stderr, "%s: round trip failed during warm-up (%s)\n", name.c_str(),
                   std::strerror(errno));
      return row;
    }
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(iters));
  const double c0 = cpu(), t0 = now();
  for (int i = 0; i < iters; ++i) {
    const double s = now();
    if (!rtt()) return row;
    samples.push_back((now() - s) * 1e6);
  }
  const double wall = now() - t0, used = cpu() - c0;
  row.p50 = bench::percentile(samples, 0.50);
  row.p99 = bench::percentile(samples, 0.99);
  row.rate = iters / wall;
  row.cpuUs = used / iters * 1e6;
  row.ok = true;
  return row;
}

std::pair<UniqueFd, UniqueFd> tcpPair() {
  auto [l, a] = bench::loopbackListener(1);
  UniqueFd c(::socket(AF_INET, SOCK_STREAM, 0));
  ::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  UniqueFd s(::accept(l.get(), nullptr, nullptr));
  int one = 1;
  ::setsockopt(c.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return {std::move(c), std::move(s)};
}

/// A thread that echoes 64-byte frames on `fd` (swapping dst/src) until the peer closes.
std::thread echoThread(int fd, bool swapIds) {
  return std::thread([fd, swapIds] {
    Descriptor d;
    while (recvAll(fd, &d, sizeof(d))) {
      if (swapIds) std::swap(d.dst, d.src);
      if (!sendAll(fd, &d, sizeof(d))) return;
    }
  });
}

/// What the DPDK rows add: the echo instance's CPU while it waits for nothing, after the
/// round trips (adaptive polling must not burn a core when idle).
struct Idle {
  double coreShare = -1;  ///< of one core, over kIdleSeconds
};
constexpr double kIdleSeconds = 2;

/// Pins the calling thread to `cpu`, or lets it run anywhere (cpu < 0).
void pinTo(pid_t pid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0)
    CPU_SET(cpu, &set);
  else
    for (int c = 0; c < CPU_SETSIZE; ++c) CPU_SET(c, &set);
  sched_setaffinity(pid, sizeof(set), &set);
}

Row routerWithRuntime(const std::string& kind, const std::string& lifl, int iters,
                      const RouterOptions& options = {}, const std::string& label = "",
                      Idle* idle = nullptr) {
  const std::string name =
      "LIFL hop, " + kind + (label.empty() ? "" : " " + label) + " router + function runtime";
  auto store = ObjectStore::create(
      {"/dev/shm/lifl-bench-hop-" + std::to_string(getpid()), 64ull << 20, false});
  auto router = makeRouter(kind, options);
  if (!store || !router) {
    std::fprintf(stderr, "%s router unavailable: %s\n", kind.c_str(),
                 (!store ? store.error() : router.error()).toString().c_str());
    return Row{name};
  }
  auto attached = router.value()->attachHere(kAgentInstance);
  if (!attached) {
    std::fprintf(stderr, "%s router: %s\n", kind.c_str(), attached.error().toString().c_str());
    return Row{name};
  }
  Endpoint& agent = *attached.value();
  Supervisor sup(*router.value(), *store.value(), agent, lifl, 1);
  (void)sup.start();
  auto echo = sup.acquire("example.echo", nlohmann::json::object());
  const InstanceId id = echo.value();
  const pid_t pid = sup.pidOf(id);
  // A polling instance has a core of its own, as D-SPRIGHT gives each function one: on the
  // sender's core it would spin away the sender's time slices.
  Descriptor d{};
  d.dst = id;
  d.kind = DescriptorKind::Event;
  if (kind == "dpdk") {  // after a round trip: the instance has joined DPDK (which pins it)
    if (agent.send(d)) (void)agent.receive(5000);
    pinTo(0, 0);
    pinTo(pid, 1);
  }
  Row row = measure(
      name, iters,
      [&] {
        if (!agent.send(d)) return false;
        auto r = agent.receive(-1);
        return r && r.value().has_value();
      },
      [&] { return bench::processCpu() + bench::pidCpu(pid); });
  if (idle) {
    const double c0 = bench::pidCpu(pid);
    ::usleep(static_cast<useconds_t>(kIdleSeconds * 1e6));
    idle->coreShare = (bench::pidCpu(pid) - c0) / kIdleSeconds;
  }
  sup.stop();
  return row;
}

Row rawSkMsg(int iters) {
  auto router = makeRouter("ebpf");
  if (!router) return Row{"raw sk_msg ping-pong (no runtime)"};
  auto a = router.value()->attach(100), b = router.value()->attach(101);
  router.value()->setGroup(100, 1);  // one job's instances: they may reach each other
  router.value()->setGroup(101, 1);
  std::thread t = echoThread(b.value().get(), true);
  Descriptor d{};
  d.dst = 101;
  d.src = 100;
  const int fd = a.value().get();
  Row row = measure(
      "raw sk_msg ping-pong, 2 sockets (no runtime)", iters,
      [&] {
        return sendAll(fd, &d, sizeof(d)) && recvAll(fd, &d, sizeof(d)) &&
               (std::swap(d.dst, d.src), true);
      },
      bench::processCpu);
  ::shutdown(b.value().get(), SHUT_RDWR);
  router.value()->detach(101);
  a.value().reset();
  b.value().reset();
  t.join();
  return row;
}

Row tcpPingPong(int iters) {
  auto [c, s] = tcpPair();
  std::thread t = echoThread(s.get(), false);
  Descriptor d{};
  const int fd = c.get();
  Row row = measure(
      "loopback TCP ping-pong, 64 B", iters,
      [&] { return sendAll(fd, &d, sizeof(d)) && recvAll(fd, &d, sizeof(d)); }, bench::processCpu);
  c.reset();
  t.join();
  return row;
}

// ---- HTTP through nginx ----------------------------------------------------------------
constexpr char kResponse[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";

bool readHttpResponse(int fd, std::string& buf) {
  for (;;) {
    auto end = buf.find("\r\n\r\n");
    if (end != std::string::npos) {
      auto cl = buf.find("Content-Length: ");
      if (cl == std::string::npos) cl = buf.find("content-length: ");
      size_t len = cl == std::string::npos ? 0 : std::stoul(buf.substr(cl + 16));
      if (buf.size() >= end + 4 + len) {
        buf.erase(0, end + 4 + len);
        return true;
      }
    }
    char tmp[4096];
    ssize_t r = ::recv(fd, tmp, sizeof(tmp), 0);
    if (r <= 0) return false;
    buf.append(tmp, static_cast<size_t>(r));
  }
}

struct Backend {  // a minimal keep-alive HTTP server: one thread per connection
  UniqueFd listener;
  uint16_t port = 0;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::thread acceptor;
  Backend() {
    sockaddr_in a{};
    std::tie(listener, a) = bench::loopbackListener(64);
    port = ntohs(a.sin_port);
    acceptor = std::thread([this] {
      for (;;) {
        int fd = ::accept(listener.get(), nullptr, nullptr);
        if (fd < 0 || stop) {
          if (fd >= 0) ::close(fd);
          return;
        }
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        threads.emplace_back([fd] {
          std::string buf;
          char tmp[4096];
          for (;;) {
            while (buf.find("\r\n\r\n") == std::string::npos) {
              ssize_t r = ::recv(fd, tmp, sizeof(tmp), 0);
              if (r <= 0) {
                ::close(fd);
                return;
              }
              buf.append(tmp, static_cast<size_t>(r));
            }
            buf.erase(0, buf.find("\r\n\r\n") + 4);
            if (!sendAll(fd, kResponse, sizeof(kResponse) - 1)) break;
          }
          ::close(fd);
        });
      }
    });
  }
  ~Backend() {
    stop = true;
    ::shutdown(listener.get(), SHUT_RDWR);
    acceptor.join();
    for (auto& t : threads) t.join();
  }
};

UniqueFd connectTo(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < 200; ++i) {
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) break;
    fd.reset(::socket(AF_INET, SOCK_STREAM, 0));
    ::usleep(10000);
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

Row httpRoundTrips(const std::string& name, uint16_t port, int iters,
                   const std::function<double()>& cpu) {
  UniqueFd fd = connectTo(port);
  static const char kRequest[] = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
  std::string buf;
  const int f = fd.get();
  return measure(
      name, iters,
      [&] { return sendAll(f, kRequest, sizeof(kRequest) - 1) && readHttpResponse(f, buf); }, cpu);
}

pid_t startNginx(const std::string& dir, uint16_t backendPort, uint16_t& proxyPort) {
  proxyPort = static_cast<uint16_t>(20000 + getpid() % 20000);
  std::filesystem::create_directories(dir + "/logs");
  std::ofstream conf(dir + "/nginx.conf");
  conf << "worker_processes 1;\ndaemon off;\nmaster_process off;\npid " << dir << "/nginx.pid;\n"
       << "error_log " << dir << "/logs/error.log info;\nevents { worker_connections 64; }\n"
       << "http {\n access_log off;\n keepalive_requests 100000000;\n client_body_temp_path " << dir
       << "/tmp;\n proxy_temp_path " << dir
       << "/tmp;\n upstream backend { server 127.0.0.1:" << backendPort
       << "; keepalive 16; keepalive_requests 100000000; }\n"
       << " server {\n  listen 127.0.0.1:" << proxyPort
       << ";\n  location / {\n   proxy_pass http://backend;\n"
       << "   proxy_http_version 1.1;\n   proxy_set_header Connection \"\";\n  }\n }\n}\n";
  conf.close();
  pid_t pid = fork();
  if (pid == 0) {
    execl("/usr/sbin/nginx", "nginx", "-p", dir.c_str(), "-c", (dir + "/nginx.conf").c_str(),
          nullptr);
    _exit(127);
  }
  return pid;
}

void print(const Row& r) {
  if (!r.ok) {
    std::printf("%-52s %s\n", r.name.c_str(), "(not available on this host)");
    return;
  }
  std::printf("%-52s %9.2f %9.2f %12.0f %12.2f\n", r.name.c_str(), r.p50, r.p99, r.rate, r.cpuUs);
}

}  // namespace

int main(int argc, char** argv) {
  lifl::log::setLevel(lifl::log::Level::Warn);
  int iters = 50000;
  bool pinned = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--spread"))
      pinned = false;
    else
      iters = std::atoi(argv[i]);
  }
  // Pinned (default): every thread and process of every path on CPU 0, as the reference
  // figures are taken ("same vCPU"); a wake-up then costs a context switch, not an IPI to
  // another vCPU, which on these VMs costs tens of microseconds. --spread lets the
  // scheduler place them.
  if (pinned) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    sched_setaffinity(0, sizeof(set), &set);  // inherited by threads, instances and nginx
  }
  const std::string lifl = bench::liflBinary();

  Row ebpf = routerWithRuntime("ebpf", lifl, iters);
  Row user = routerWithRuntime("userspace", lifl, iters);
  // The DPDK rows: the instance on CPU 1, the agent side on CPU 0 (set inside), whatever the
  // pinning of the others; the process goes back to its mask afterwards.
  cpu_set_t mask;
  sched_getaffinity(0, sizeof(mask), &mask);
  pinTo(0, -1);
  RouterOptions busyOptions, adaptiveOptions;
  busyOptions.dpdkPrefix = adaptiveOptions.dpdkPrefix = "lifl-bench-hop";
  busyOptions.dpdkPolling = DpdkPolling::Busy;
  Idle busyIdle, adaptiveIdle;
  Row busy = routerWithRuntime("dpdk", lifl, iters, busyOptions, "(busy)", &busyIdle);
  Row adaptive =
      routerWithRuntime("dpdk", lifl, iters, adaptiveOptions, "(adaptive)", &adaptiveIdle);
  sched_setaffinity(0, sizeof(mask), &mask);
  Row raw = rawSkMsg(iters);
  Row tcp = tcpPingPong(iters);

  Backend backend;
  Row direct = httpRoundTrips("HTTP request, direct to the backend", backend.port, iters / 2,
                              bench::processCpu);
  Row proxied{"HTTP request through nginx reverse proxy"};
  double nginxCpuPerReq = 0;
  if (std::filesystem::exists("/usr/sbin/nginx")) {
    const std::string dir = "/tmp/lifl-bench-nginx-" + std::to_string(getpid());
    std::filesystem::create_directories(dir + "/tmp");
    uint16_t proxyPort = 0;
    pid_t nginx = startNginx(dir, backend.port, proxyPort);
    ::usleep(300000);  // let it bind before the first connection
    proxied = httpRoundTrips("HTTP request through nginx reverse proxy", proxyPort, iters / 2,
                             [&] { return bench::processCpu() + bench::pidCpu(nginx); });
    {  // the proxy's own CPU per request
      UniqueFd fd = connectTo(proxyPort);
      std::string buf;
      static const char kRequest[] = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
      const int reqs = iters / 2;
      const double c0 = bench::pidCpu(nginx);
      for (int i = 0; i < reqs; ++i)
        if (!sendAll(fd.get(), kRequest, sizeof(kRequest) - 1) || !readHttpResponse(fd.get(), buf))
          break;
      nginxCpuPerReq = (bench::pidCpu(nginx) - c0) / reqs * 1e6;
    }
    ::kill(nginx, SIGTERM);
    ::waitpid(nginx, nullptr, 0);
    if (!std::getenv("LIFL_BENCH_KEEP")) std::filesystem::remove_all(dir);
  }

  std::printf(
      "round trips (= 2 hops) of a 64-byte descriptor/request, %d iterations after %d warm-up, "
      "%s\n",
      iters, kWarmup, pinned ? "all on one vCPU" : "threads spread by the scheduler");
  bench::rule(100);
  std::printf("%-52s %9s %9s %12s %12s\n", "path", "p50 us", "p99 us", "round trips/s",
              "CPU us/rt");
  bench::rule(100);
  for (const Row* r : {&ebpf, &user, &busy, &adaptive, &raw, &tcp, &direct, &proxied}) print(*r);
  bench::rule(100);
  if (busy.ok && adaptive.ok) {
    std::printf(
        "DPDK hop p50: busy %.2f us (target <= 1), adaptive %.2f us (%.2fx busy, target "
        "<= 2x)\n",
        busy.p50 / 2, adaptive.p50 / 2, adaptive.p50 / busy.p50);
    std::printf(
        "an idle instance's CPU over %.0f s: busy %.1f%% of a core, adaptive %.2f%% "
        "(target < 2%%)\n",
        kIdleSeconds, busyIdle.coreShare * 100, adaptiveIdle.coreShare * 100);
    if (ebpf.ok) std::printf("eBPF hop p50 / DPDK busy hop p50 = %.1fx\n", ebpf.p50 / busy.p50);
  }
  if (ebpf.ok && raw.ok)
    std::printf("LIFL eBPF hop p50 / raw sk_msg p50 = %.2f (target <= 1.3)\n", ebpf.p50 / raw.p50);
  if (ebpf.ok && user.ok)
    std::printf("userspace router p50 / LIFL eBPF p50 = %.2f\n", user.p50 / ebpf.p50);
  if (proxied.ok && direct.ok && ebpf.ok) {
    // A sidecar hop (Knative queue-proxy) is what nginx adds to a request; a LIFL hop is one
    // descriptor through the kernel plus the function runtime: half a LIFL round trip, with
    // the CPU of both ends (their own send/recv included, so LIFL's side is overstated).
    const double added = proxied.p50 - direct.p50;
    const double hop = ebpf.p50 / 2, hopCpu = ebpf.cpuUs / 2;
    std::printf("nginx hop: adds %.2f us p50 and %.2f us of proxy CPU per request\n", added,
                nginxCpuPerReq);
    std::printf("LIFL hop:  %.2f us p50 and %.2f us CPU (both ends, runtime included)\n", hop,
                hopCpu);
    std::printf(
        "latency: nginx / LIFL = %.1fx (target >= 5); CPU: nginx / LIFL = %.1fx (target >= 10)\n",
        added / hop, nginxCpuPerReq / hopCpu);
    if (raw.ok)
      std::printf(
          "what the router and runtime add over a raw sk_msg hop: %.2f us latency, %.2f us CPU\n",
          (ebpf.p50 - raw.p50) / 2, (ebpf.cpuUs - raw.cpuUs) / 2);
  }
  return 0;
}
