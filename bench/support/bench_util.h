// Small helpers shared by the benchmarks: percentiles, CPU time, wall time, table output.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "lifl/common/unique_fd.h"

namespace lifl::bench {

inline double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// CPU seconds (user + system) of this process, all threads.
/// The best wall time of `reps` runs of f.
template <class F>
double bestSeconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

inline double processCpu() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec * 1e-6;
}

/// CPU seconds (user + system) of another process, from /proc/<pid>/stat.
inline double pidCpu(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  auto close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  // utime, stime, and cutime, cstime: the agent reaps instances that exit during a run
  // (scale-down), and their CPU time moves to it.
  double ticks = 0;
  for (int i = 3; i <= 17 && rest >> field; ++i)
    if (i >= 14) ticks += std::stod(field);
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

/// The lifl binary: $LIFL_BIN, else the one beside this benchmark (both in build/bin).
inline std::string liflBinary() {
  if (const char* env = std::getenv("LIFL_BIN")) return env;
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  self[n > 0 ? n : 0] = '\0';
  std::string path(self);
  return path.substr(0, path.rfind('/') + 1) + "lifl";
}

/// A TCP listener on 127.0.0.1 and a free port, and the address to connect to.
inline std::pair<UniqueFd, sockaddr_in> loopbackListener(int backlog) {
  UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int one = 1;
  ::setsockopt(l.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::listen(l.get(), backlog);
  socklen_t len = sizeof(a);
  ::getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return {std::move(l), a};
}

/// send/recv of exactly n bytes; false when the peer is gone.
inline bool sendAll(int fd, const void* p, size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}
inline bool recvAll(int fd, void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = ::recv(fd, c, n, 0);
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

/// Seconds to move `payload` perStream times over each of `streams` loopback TCP connections
/// into a buffer of its size (the baseline of the ingest benchmarks: no HTTP, no store).
inline double rawTcpSeconds(const std::vector<char>& payload, int streams, int perStream) {
  auto [l, a] = loopbackListener(streams);
  std::vector<std::thread> threads;
  const double t0 = now();
  for (int s = 0; s < streams; ++s) {
    threads.emplace_back([&] {
      UniqueFd fd(::accept(l.get(), nullptr, nullptr));
      std::vector<char> sink(payload.size());
      for (int i = 0; i < perStream; ++i)
        if (!recvAll(fd.get(), sink.data(), sink.size())) return;
    });
    threads.emplace_back([&] {
      UniqueFd fd(::socket(AF_INET, SOCK_STREAM, 0));
      ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof(a));
      for (int i = 0; i < perStream; ++i)
        if (!sendAll(fd.get(), payload.data(), payload.size())) return;
    });
  }
  for (auto& t : threads) t.join();
  return now() - t0;
}

inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

inline void rule(int width = 100) {
  std::printf("%s\n", std::string(static_cast<size_t>(width), '-').c_str());
}

}  // namespace lifl::bench
