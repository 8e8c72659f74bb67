#include "lifl/dataplane/supervisor.h"

#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "lifl/common/log.h"

extern char** environ;

namespace lifl::dataplane {
namespace {

int pidfdOpen(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
}  // namespace

Supervisor::Supervisor(Router& router, ObjectStore& store, Endpoint& agentEndpoint,
                       std::string executable, uint32_t warmTarget)
    : router_(router),
      store_(store),
      endpoint_(agentEndpoint),
      executable_(std::move(executable)),
      warmTarget_(warmTarget) {}

Supervisor::~Supervisor() { stop(); }

Result<void> Supervisor::start() {
  {
    std::lock_guard lock(mutex_);
    for (uint32_t i = 0; i < warmTarget_; ++i) LIFL_TRYV(spawnLocked());
  }
  watcher_ = std::thread([this] { watch(); });
  return success();
}

Result<InstanceId> Supervisor::spawnLocked() {
  if (stopping_) return unavailable("shutting_down", "the agent is stopping");
  const InstanceId id = nextId_++;
  LIFL_TRY(sock, router_.attach(id));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  const std::string idArg = std::to_string(id), agentArg = std::to_string(::getpid());
  std::vector<std::string> args = {executable_, "instance",    "--id",        idArg,
                                   "--store",   store_.path(), "--agent-pid", agentArg};
  if (sock) {  // a socket the instance inherits as fd 3 (dup2 clears FD_CLOEXEC)
    posix_spawn_file_actions_adddup2(&actions, sock.get(), 3);
    args.insert(args.end(), {"--fd", "3"});
  } else {  // a ring it opens itself (DPDK)
    const auto endpoint = router_.endpointArgs();
    args.insert(args.end(), endpoint.begin(), endpoint.end());
  }
  if (instanceUser_) {
    args.push_back("--user");
    args.push_back(std::to_string(instanceUser_->first) + ":" +
                   std::to_string(instanceUser_->second));
  }
  // The instance's processed counter: a small Control object the agent owns and reads.
  std::optional<ObjectRef> counter;
  if (auto c = store_.allocate(sizeof(uint64_t), ObjectKind::Control, kAgentInstance)) {
    counter = c.value();
    *reinterpret_cast<uint64_t*>(counter->data()) = 0;
    const auto h = counter->handle();
    args.push_back("--processed");
    args.push_back(std::to_string(h.offset) + ":" + std::to_string(h.length) + ":" +
                   std::to_string(h.generation));
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // Note: PR_SET_PDEATHSIG in the instance fires when the *thread* that spawned it exits;
  // every thread that spawns (gateway, endpoint reader, watcher) lives as long as the agent.
  // Instances get a clean signal mask (the agent blocks SIGINT/SIGTERM for sigwait) and
  // their own process group, so a terminal's Ctrl-C stops the agent, which then stops them.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, executable_.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    router_.detach(id);
    if (counter) store_.release(counter->handle());
    return systemError("spawn function instance", rc);
  }
  UniqueFd pidfd(pidfdOpen(pid));
  if (!pidfd) return systemError("pidfd_open", errno);
  LIFL_TRYV(epoll_.add(pidfd.get(), id));
  children_[id] =
      Child{pid, std::move(pidfd), false, false, {}, counter, std::chrono::steady_clock::now()};
  LIFL_DEBUG("started instance " << id << " (pid " << pid << ")");
  return id;
}

uint32_t Supervisor::groupOfLocked(InstanceId id, const nlohmann::json& params) {
  std::string key = "instance:" + std::to_string(id);
  if (params.contains("job"))
    key = "job:" + params["job"].dump();
  else if (params.contains("chain"))
    key = "chain:" + params["chain"].dump();
  auto [it, added] = groups_.try_emplace(key, nextGroup_);
  if (added && ++nextGroup_ == kGroupAny) nextGroup_ = 1;  // 2^32 - 2 groups before reuse
  return it->second;
}

Result<void> Supervisor::assign(InstanceId id, const std::string& function,
                                const nlohmann::json& params) {
  {  // before the instance hears of its work: it may send to its peers at once
    std::lock_guard lock(mutex_);
    router_.setGroup(id, groupOfLocked(id, params));
  }
  const std::string text = nlohmann::json{{"function", function}, {"params", params}}.dump();
  LIFL_TRY(object, store_.allocate(text.size(), ObjectKind::Control, id));
  std::memcpy(object.data(), text.data(), text.size());
  Descriptor d{};
  d.dst = id;
  d.kind = DescriptorKind::Assign;
  object.describe(d);
  if (auto sent = endpoint_.send(d); !sent) {
    store_.release(object.handle());
    return sent.error();
  }
  std::lock_guard lock(mutex_);
  if (auto it = children_.find(id); it != children_.end()) {
    it->second.busy = true;
    it->second.function = function;
  }
  return success();
}

Result<InstanceId> Supervisor::reserve() {
  std::lock_guard lock(mutex_);
  for (auto& [id, child] : children_) {
    if (!child.busy && !child.retiring) {
      child.busy = true;
      return id;
    }
  }
  LIFL_TRY(id, spawnLocked());
  ++coldStarts_;
  children_[id].busy = true;
  return id;
}

Result<InstanceId> Supervisor::acquire(const std::string& function, const nlohmann::json& params) {
  LIFL_TRY(id, reserve());
  if (auto assigned = assign(id, function, params); !assigned) {
    release(id);
    return assigned.error();
  }
  return id;
}

void Supervisor::release(InstanceId id, bool tellInstance) {
  if (tellInstance) {
    Descriptor d{};
    d.dst = id;
    d.kind = DescriptorKind::Release;
    (void)endpoint_.send(d);
  }
  std::lock_guard lock(mutex_);
  router_.setGroup(id, kGroupNone);  // back in the pool: it reaches the agent only
  auto it = children_.find(id);
  if (it == children_.end()) return;
  it->second.busy = false;
  it->second.function.clear();
  it->second.idleSince = std::chrono::steady_clock::now();
}

// Scale-down after a keep-alive, not at release: a job that ends releases its whole tree at
// once, and a burst of exiting processes (each unmapping the store) would compete with the
// serving of the round's model; an instance released now may also be reserved again soon.
void Supervisor::retireIdle() {
  std::lock_guard lock(mutex_);
  uint32_t idle = 0;
  for (const auto& [_, c] : children_) idle += !c.busy && !c.retiring;
  const auto now = std::chrono::steady_clock::now();
  constexpr uint32_t kPerTick = 4;
  uint32_t retiredNow = 0;
  for (auto& [id, c] : children_) {
    if (idle <= warmTarget_ || retiredNow == kPerTick) break;
    if (c.busy || c.retiring ||
        std::chrono::duration<double>(now - c.idleSince).count() < keepAliveSeconds_)
      continue;
    Descriptor d{};
    d.dst = id;
    d.kind = DescriptorKind::Shutdown;
    (void)endpoint_.send(d);  // after the Release, which freed what it held
    c.retiring = true;
    ++retired_;
    --idle;
    ++retiredNow;
  }
}

void Supervisor::watch() {
  while (!stopping_) {
    epoll_.wait(100, [this](uint64_t id) { reap(static_cast<InstanceId>(id)); });
    retireIdle();
  }
}

void Supervisor::reap(InstanceId id) {
  pid_t pid = 0;
  bool retiring = false;
  {
    std::lock_guard lock(mutex_);
    auto it = children_.find(id);
    if (it == children_.end()) return;
    pid = it->second.pid;
    retiring = it->second.retiring;
    epoll_.remove(it->second.pidfd.get());
    forget(it->second);
    children_.erase(it);
    if (!retiring) ++deaths_;
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  router_.detach(id);
  if (stopping_ || retiring) return;  // a shutdown or a scale-down: nothing to recover
  LIFL_WARN("instance " << id << " (pid " << pid << ") exited: "
                        << (WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                                : "status " + std::to_string(WEXITSTATUS(status))));
  if (onDeath_) onDeath_(id, pid, status);
  std::lock_guard lock(mutex_);
  uint32_t idle = 0;
  for (const auto& [_, c] : children_) idle += !c.busy;
  if (idle < warmTarget_ && !stopping_) (void)spawnLocked();  // keep the pool warm
}

void Supervisor::stop() {
  stopping_ = true;
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    stopped_ = true;
  }
  epoll_.wake();
  if (watcher_.joinable()) watcher_.join();
  std::lock_guard lock(mutex_);
  for (auto& [id, child] : children_) {
    Descriptor d{};
    d.dst = id;
    d.kind = DescriptorKind::Shutdown;
    (void)endpoint_.send(d);
  }
  // Bounded wait for a clean exit, then SIGKILL what is left.
  for (int tries = 0; tries < 50; ++tries) {
    bool alive = false;
    for (auto& [id, child] : children_) {
      if (child.pid && ::waitpid(child.pid, nullptr, WNOHANG) == 0)
        alive = true;
      else
        child.pid = 0;
    }
    if (!alive) break;
    ::usleep(20'000);
  }
  for (auto& [id, child] : children_) {
    if (child.pid) {
      ::kill(child.pid, SIGKILL);
      ::waitpid(child.pid, nullptr, 0);
    }
    router_.detach(id);
    forget(child);
  }
  children_.clear();
}

std::vector<InstanceStatus> Supervisor::instances() const {
  std::lock_guard lock(mutex_);
  std::vector<InstanceStatus> out;
  for (const auto& [id, c] : children_)
    out.push_back({id, c.pid, c.busy, c.function, processedLocked(c)});
  return out;
}

SupervisorStats Supervisor::stats() const {
  std::lock_guard lock(mutex_);
  SupervisorStats s;
  for (const auto& [_, c] : children_)
    if (!c.retiring) (c.busy ? s.busy : s.warm)++;
  s.coldStarts = coldStarts_;
  s.retired = retired_;
  s.deaths = deaths_;
  return s;
}

void Supervisor::forget(Child& c) {
  if (c.processed) store_.release(c.processed->handle());
  c.processed.reset();
}

uint64_t Supervisor::processedLocked(const Child& c) const {
  if (!c.processed) return 0;
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(c.processed->data()))
      .load(std::memory_order_acquire);
}

std::vector<uint64_t> Supervisor::heldObjects() const {
  std::lock_guard lock(mutex_);
  std::vector<uint64_t> out;
  for (const auto& [_, c] : children_)
    if (c.processed) out.push_back(c.processed->handle().generation);
  return out;
}

uint64_t Supervisor::processed(InstanceId id) const {
  std::lock_guard lock(mutex_);
  auto it = children_.find(id);
  return it == children_.end() ? 0 : processedLocked(it->second);
}

pid_t Supervisor::pidOf(InstanceId id) const {
  std::lock_guard lock(mutex_);
  auto it = children_.find(id);
  return it == children_.end() ? 0 : it->second.pid;
}

}  // namespace lifl::dataplane
