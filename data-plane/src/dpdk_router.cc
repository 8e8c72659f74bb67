// The DPDK router (SPRIGHT's D-SPRIGHT data plane, docs/dpdk.md): every endpoint is an
// rte_ring of 64-byte descriptors in hugepage memory, which DPDK's multi-process model maps
// at the same address in the agent (the primary) and in every instance (a secondary). A
// sender looks its destination up in a route table in the same memory and enqueues the
// descriptor into the destination's ring itself: no kernel, no system call, no relay. The
// object store is the same as with the other routers; only descriptors travel here.
//
// A receiver polls its ring. Busy, it never stops (a core per instance); adaptive, it polls
// for a bounded time, then sleeps on a futex in its route slot, which a sender bumps after
// enqueueing to a sleeping receiver. (A futex rather than an eventfd: every sender already
// maps the slot, while an eventfd would have to be passed to each sender process.)
//
// Isolation is the library's, not the kernel's: an instance maps the whole table, so this
// router trusts the instances of its node (unlike the eBPF router, whose verdicts an
// instance cannot bypass). Instances therefore run as the agent's user (no functions.user).
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "lifl/common/log.h"
#include "lifl/dataplane/router.h"

#ifdef LIFL_WITH_DPDK
#include <linux/futex.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_memzone.h>
#include <rte_pause.h>
#include <rte_ring.h>
#include <rte_ring_elem.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace lifl::dataplane {

#ifdef LIFL_WITH_DPDK
namespace {

constexpr uint32_t kSlots = 4096;     ///< endpoints of a node at once
constexpr uint32_t kRingSize = 1024;  ///< descriptors a ring holds (less one)
constexpr char kTableName[] = "lifl_routes";
constexpr uint32_t kBurst = 32;

enum SlotState : uint32_t {
  kFree = 0,  ///< never used: a lookup stops here
  kLive = 1,
  kGone = 2,  ///< detached: a lookup passes it
};

/// One endpoint's entry, shared by every process of the node. Lock-free atomics of 4 and 8
/// bytes are address-free, so they work across processes.
struct alignas(64) Slot {
  std::atomic<uint32_t> state;
  std::atomic<uint32_t> id;
  std::atomic<uint32_t> group;
  std::atomic<uint32_t> sleeping;  ///< the owner sleeps on `wake`
  std::atomic<uint32_t> wake;      ///< futex word: bumped by each wake-up
  /// Given by the primary from its pool, taken back when the slot is retired (null then).
  std::atomic<rte_ring*> ring;
  std::atomic<uint64_t> delivered, deliveredBytes, sent, dropped;
};

struct Table {
  uint32_t polling;  ///< DpdkPolling
  uint32_t spinMicros;
  Slot slots[kSlots];
};

Error dpdkError(const std::string& what) {
  return unavailable("dpdk_error", what + ": " + rte_strerror(rte_errno));
}

/// The primary's hugepage files and runtime directory, at its exit: mapped where they are in
/// use, they stay until the last process unmaps them, and no process joins afterwards.
/// Without this each agent with a prefix of its own would leave its hugepages reserved (a
/// kill -9 still does, until an agent of the same data directory starts).
std::string primaryPrefix;
void removeDpdkFiles() {
  std::error_code ec;
  const std::string files = primaryPrefix + "map_";
  for (const auto& e : std::filesystem::directory_iterator("/dev/hugepages", ec))
    if (e.path().filename().string().rfind(files, 0) == 0) std::filesystem::remove(e, ec);
  std::filesystem::remove_all(rte_eal_get_runtime_dir(), ec);
}

/// EAL, once per process: the agent as primary, an instance as secondary, both under the
/// node's file prefix. EAL pins the calling thread to its lcore; the mask before is put back,
/// so that the threads the process starts later run on every CPU.
Result<void> joinEal(const std::string& prefix, bool primary) {
  static std::mutex mutex;
  static std::string joined;  // "prefix:role" of this process's EAL
  const std::string want = prefix + (primary ? ":primary" : ":secondary");
  std::lock_guard lock(mutex);
  if (!joined.empty()) {
    if (joined == want) return success();
    return unavailable("dpdk_error", "this process already joined DPDK as " + joined);
  }
  std::vector<std::string> args = {"lifl",
                                   primary ? "--proc-type=primary" : "--proc-type=secondary",
                                   "--file-prefix=" + prefix,
                                   "--no-pci",  // never probe the machine's own devices
                                   "--no-telemetry",
                                   "--iova-mode=va",  // no physical addresses: no privilege
                                   "-l",
                                   "0",
                                   "--log-level=4"};  // errors only
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  cpu_set_t cpus;
  const bool hadMask = sched_getaffinity(0, sizeof(cpus), &cpus) == 0;
  const int rc = rte_eal_init(static_cast<int>(argv.size()), argv.data());
  if (hadMask) sched_setaffinity(0, sizeof(cpus), &cpus);
  if (rc < 0)
    return dpdkError(std::string("DPDK EAL init as ") + (primary ? "primary" : "secondary") +
                     " (hugepages reserved and mounted? scripts/setup.sh --hugepages)");
  joined = want;
  if (primary) {
    primaryPrefix = prefix;
    std::atexit(removeDpdkFiles);
  }
  return success();
}

Slot* findLive(Table* t, InstanceId id) {
  for (uint32_t i = 0; i < kSlots; ++i) {
    Slot& s = t->slots[(id + i) % kSlots];
    const uint32_t state = s.state.load(std::memory_order_acquire);
    if (state == kFree) return nullptr;
    if (state == kLive && s.id.load(std::memory_order_acquire) == id) return &s;
  }
  return nullptr;
}

void futexWake(std::atomic<uint32_t>& word) {
  word.fetch_add(1, std::memory_order_release);
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE, 1, nullptr, nullptr, 0);
}

class RingEndpoint final : public Endpoint {
 public:
  RingEndpoint(Table* table, Slot* mine, InstanceId id)
      : Endpoint(id), table_(table), mine_(mine) {}

  Result<void> send(Descriptor d) override {
    d.src = self();
    mine_->sent.fetch_add(1, std::memory_order_relaxed);
    Slot* to = findLive(table_, d.dst);
    rte_ring* ring = to ? to->ring.load(std::memory_order_acquire) : nullptr;
    if (!ring || !mayReach(mine_->group.load(std::memory_order_relaxed),
                           to->group.load(std::memory_order_relaxed))) {
      mine_->dropped.fetch_add(1, std::memory_order_relaxed);
      return success();
    }
    // A full ring waits for its receiver, as a full socket buffer blocks its sender. (A
    // ring retired meanwhile and given to another instance takes the descriptor; that
    // receiver drops it, seeing another dst.)
    while (rte_ring_mp_enqueue_elem(ring, &d, sizeof(d)) != 0) {
      if (to->state.load(std::memory_order_acquire) != kLive ||
          to->id.load(std::memory_order_acquire) != d.dst) {
        mine_->dropped.fetch_add(1, std::memory_order_relaxed);
        return success();
      }
      if (to->sleeping.load()) futexWake(to->wake);
      sched_yield();
    }
    to->delivered.fetch_add(1, std::memory_order_relaxed);
    to->deliveredBytes.fetch_add(sizeof(d), std::memory_order_relaxed);
    // Dekker with the receiver's sleep: the enqueue, then the flag; it sets the flag, then
    // looks at the ring. One of the two sees the other.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (to->sleeping.load(std::memory_order_relaxed)) futexWake(to->wake);
    return success();
  }

  Result<std::optional<Descriptor>> receive(int timeoutMs) override {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::milliseconds(timeoutMs < 0 ? 0 : timeoutMs);
    const bool busy = table_->polling == static_cast<uint32_t>(DpdkPolling::Busy);
    auto spinUntil = start + std::chrono::microseconds(table_->spinMicros);
    for (uint64_t round = 0;; ++round) {
      while (next_ < count_) {
        const Descriptor& d = buffer_[next_++];
        if (d.dst == self()) return std::optional<Descriptor>{d};
        // Enqueued for this slot's previous owner by a sender that looked it up before the
        // agent gave the slot to this instance: not ours.
      }
      rte_ring* ring = mine_->ring.load(std::memory_order_acquire);
      count_ =
          ring ? rte_ring_sc_dequeue_burst_elem(ring, buffer_, sizeof(Descriptor), kBurst, nullptr)
               : 0;
      next_ = 0;
      if (count_ > 0) continue;
      if (stopping_.load(std::memory_order_acquire))
        return internal("endpoint_shut", "receive was shut down");
      if (mine_->state.load(std::memory_order_acquire) != kLive ||
          mine_->id.load(std::memory_order_acquire) != self())
        return internal("router_closed", "the router detached this instance");
      if (timeoutMs == 0) return std::optional<Descriptor>{};
      // The clock is read every 64 polls: a poll is tens of nanoseconds.
      if (round % 64 != 0) {
        rte_pause();
        continue;
      }
      const auto now = Clock::now();
      if (timeoutMs > 0 && now >= deadline) return std::optional<Descriptor>{};
      if (busy || now < spinUntil) {
        rte_pause();
        continue;
      }
      // Asleep until a sender bumps the word, or 100 ms pass (the slot's state is looked at
      // again then), or the timeout.
      const uint32_t seen = mine_->wake.load(std::memory_order_acquire);
      mine_->sleeping.store(1, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      if (rte_ring* ring = mine_->ring.load(); ring && rte_ring_empty(ring) && !stopping_.load()) {
        auto wait = std::chrono::milliseconds(100);
        if (timeoutMs > 0)
          wait =
              std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now) +
                                 std::chrono::milliseconds(1));
        timespec ts{static_cast<time_t>(wait.count() / 1000),
                    static_cast<long>(wait.count() % 1000) * 1000000};
        ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&mine_->wake), FUTEX_WAIT, seen, &ts,
                  nullptr, 0);
      }
      mine_->sleeping.store(0, std::memory_order_relaxed);
      spinUntil = Clock::now() + std::chrono::microseconds(table_->spinMicros);
    }
  }

  void shutdownReceive() override {
    stopping_.store(true, std::memory_order_release);
    futexWake(mine_->wake);
  }

 private:
  Table* table_;
  Slot* mine_;
  std::atomic<bool> stopping_{false};
  Descriptor buffer_[kBurst];
  uint32_t next_ = 0, count_ = 0;
};

class DpdkRouter final : public Router {
 public:
  DpdkRouter(Table* table, RouterOptions options) : table_(table), options_(std::move(options)) {
    for (auto& s : table_->slots)  // an earlier router's of this process
      if (rte_ring* r = s.ring.exchange(nullptr)) spare_.push_back(r);
  }
  ~DpdkRouter() override {
    std::lock_guard lock(mutex_);
    for (auto& s : table_->slots)
      if (s.state.load() == kLive) retire(s);
  }

  RouterKind kind() const override { return RouterKind::Dpdk; }

  Result<UniqueFd> attach(InstanceId id) override {
    LIFL_TRYV(attachSlot(id));
    return UniqueFd();
  }

  Result<std::unique_ptr<Endpoint>> attachHere(InstanceId id) override {
    LIFL_TRY(slot, attachSlot(id));
    return std::unique_ptr<Endpoint>(std::make_unique<RingEndpoint>(table_, slot, id));
  }

  std::vector<std::string> endpointArgs() const override { return {"--dpdk", options_.dpdkPrefix}; }

  void detach(InstanceId id) override {
    std::lock_guard lock(mutex_);
    if (Slot* s = findLive(table_, id)) retire(*s);
  }

  void setGroup(InstanceId id, uint32_t group) override {
    std::lock_guard lock(mutex_);
    if (Slot* s = findLive(table_, id); s && id != kAgentInstance) s->group.store(group);
  }

  RouteCounters counters(InstanceId id) const override {
    const Slot* s = findLive(table_, id);
    if (!s) return {};
    return {s->delivered.load(), s->deliveredBytes.load(), s->sent.load(), s->dropped.load()};
  }

 private:
  Result<Slot*> attachSlot(InstanceId id) {
    std::lock_guard lock(mutex_);
    Slot* slot = findLive(table_, id);  // a restarted instance takes its slot again
    if (slot) retire(*slot);
    for (uint32_t i = 0; i < kSlots && !slot; ++i) {
      Slot& s = table_->slots[(id + i) % kSlots];
      if (s.state.load() != kLive) slot = &s;
    }
    if (!slot) return unavailable("router_full", "the DPDK router holds no free endpoint slot");
    // Rings are pooled: one per endpoint alive at once, however many instances come and go
    // (DPDK caps its memzones, and a ring is one).
    rte_ring* ring = nullptr;
    if (!spare_.empty()) {
      ring = spare_.back();
      spare_.pop_back();
    } else {
      const std::string name = "lifl_rx_" + std::to_string(ringsCreated_);
      ring = rte_ring_lookup(name.c_str());  // an earlier router's, not in a slot
      if (!ring)
        ring = rte_ring_create_elem(name.c_str(), sizeof(Descriptor), kRingSize, SOCKET_ID_ANY,
                                    RING_F_SC_DEQ);
      if (!ring) return dpdkError("rte_ring_create_elem " + name);
      ++ringsCreated_;
    }
    Descriptor stale[kBurst];  // left by a previous owner
    while (rte_ring_sc_dequeue_burst_elem(ring, stale, sizeof(Descriptor), kBurst, nullptr) > 0) {
    }
    slot->ring.store(ring, std::memory_order_release);
    slot->group.store(id == kAgentInstance ? kGroupAny : kGroupNone);
    for (auto* c : {&slot->delivered, &slot->deliveredBytes, &slot->sent, &slot->dropped})
      c->store(0);
    slot->sleeping.store(0);
    slot->id.store(id, std::memory_order_release);
    slot->state.store(kLive, std::memory_order_release);
    return slot;
  }

  /// Gone for lookups; its owner, asleep or not, sees it and returns router_closed.
  void retire(Slot& s) {
    s.state.store(kGone, std::memory_order_release);
    s.id.store(0, std::memory_order_release);
    if (rte_ring* r = s.ring.exchange(nullptr)) spare_.push_back(r);
    futexWake(s.wake);
  }

  Table* table_;
  RouterOptions options_;
  std::mutex mutex_;
  std::vector<rte_ring*> spare_;  ///< rings of retired slots
  uint32_t ringsCreated_ = 0;
};

}  // namespace

Result<std::unique_ptr<Router>> makeDpdkRouter(const RouterOptions& options) {
  LIFL_TRYV(joinEal(options.dpdkPrefix, true));
  const rte_memzone* zone = rte_memzone_lookup(kTableName);
  if (!zone) zone = rte_memzone_reserve(kTableName, sizeof(Table), SOCKET_ID_ANY, 0);
  if (!zone) return dpdkError("rte_memzone_reserve of the route table");
  auto* table = static_cast<Table*>(zone->addr);
  // A fresh table (a second router in one process starts over too); rings of an earlier
  // router of this process stay attached to their slots for reuse.
  for (auto& s : table->slots) {
    s.state.store(kFree);
    s.id.store(0);
  }
  table->polling = static_cast<uint32_t>(options.dpdkPolling);
  table->spinMicros = options.spinMicros;
  return std::unique_ptr<Router>(std::make_unique<DpdkRouter>(table, options));
}

Result<std::unique_ptr<Endpoint>> openDpdkEndpoint(const std::string& prefix, InstanceId id) {
  LIFL_TRYV(joinEal(prefix, false));
  const rte_memzone* zone = rte_memzone_lookup(kTableName);
  if (!zone) return dpdkError("the route table of DPDK prefix " + prefix);
  auto* table = static_cast<Table*>(zone->addr);
  Slot* slot = findLive(table, id);
  if (!slot) return notFound("not_attached", "instance " + std::to_string(id) + " is not attached");
  return std::unique_ptr<Endpoint>(std::make_unique<RingEndpoint>(table, slot, id));
}

#else  // a build without DPDK

Result<std::unique_ptr<Router>> makeDpdkRouter(const RouterOptions&) {
  return unavailable("no_dpdk", "router: dpdk needs a build with DPDK (libdpdk-dev)");
}

Result<std::unique_ptr<Endpoint>> openDpdkEndpoint(const std::string&, InstanceId) {
  return unavailable("no_dpdk", "router: dpdk needs a build with DPDK (libdpdk-dev)");
}

#endif

}  // namespace lifl::dataplane
