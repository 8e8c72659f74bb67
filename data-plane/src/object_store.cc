#include "lifl/dataplane/object_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/indexes/iset_index.hpp>
#include <boost/interprocess/managed_mapped_file.hpp>
#include <boost/interprocess/mem_algo/rbtree_best_fit.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>
#include <mutex>

#include "lifl/dataplane/robust_mutex.h"

namespace lifl::dataplane {

namespace bip = boost::interprocess;

namespace {
constexpr uint64_t kHeaderMagic = 0x4c49464c4f424a31ull;  // "LIFLOBJ1"
constexpr uint64_t kRootMagic = 0x4c49464c524f4f54ull;    // "LIFLROOT"
constexpr uint64_t kHugePage = 2ull << 20;
constexpr uint64_t kAlign = 64;

using Algorithm = bip::rbtree_best_fit<RobustMutexFamily, bip::offset_ptr<void>>;
using Segment = bip::basic_managed_mapped_file<char, Algorithm, bip::iset_index>;
}  // namespace

struct alignas(64) ObjectHeader {
  uint64_t magic;
  std::atomic<uint64_t> generation;
  uint64_t capacity;
  std::atomic<uint64_t> length;
  std::atomic<uint64_t> container;
  std::atomic<uint32_t> refcount;
  std::atomic<uint32_t> owner;
  uint32_t producer;
  uint16_t kind;
  std::atomic<uint16_t> flags;
  std::atomic<uint32_t> job;
  std::atomic<uint32_t> round;
  uint64_t prev;  // offsets of neighbours in the live-object list; 0: none
  uint64_t next;
  std::atomic<uint64_t> value;  // kind-specific: an update's weight (ce-numexamples)
  uint64_t reserved[5];
};
static_assert(sizeof(ObjectHeader) == 128, "object header is two cache lines");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared atomics must be lock-free");

namespace {
struct StoreRoot {
  uint64_t magic = kRootMagic;
  RobustMutex listMutex;
  uint64_t head = 0;
  std::atomic<uint64_t> nextGeneration{1};
};
}  // namespace

struct ObjectStore::Impl {
  Segment segment;
  StoreRoot* root = nullptr;

  ObjectHeader* at(uint64_t offset) const {
    return static_cast<ObjectHeader*>(segment.get_address_from_handle(offset));
  }
  uint64_t offsetOf(const ObjectHeader* h) const { return segment.get_handle_from_address(h); }
};

// ---- ObjectRef ----
uint64_t ObjectRef::capacity() const { return header_->capacity; }
ObjectKind ObjectRef::kind() const { return static_cast<ObjectKind>(header_->kind); }
InstanceId ObjectRef::owner() const { return header_->owner.load(std::memory_order_acquire); }
InstanceId ObjectRef::producer() const { return header_->producer; }
uint64_t ObjectRef::container() const { return header_->container.load(std::memory_order_acquire); }
bool ObjectRef::sealed() const {
  return header_->flags.load(std::memory_order_acquire) & kObjectSealed;
}
uint32_t ObjectRef::round() const { return header_->round.load(std::memory_order_relaxed); }
uint32_t ObjectRef::job() const { return header_->job.load(std::memory_order_relaxed); }
uint32_t ObjectRef::refcount() const { return header_->refcount.load(std::memory_order_relaxed); }
void ObjectRef::setOwner(InstanceId owner) const {
  header_->owner.store(owner, std::memory_order_release);
}
void ObjectRef::setContainer(uint64_t g) const {
  header_->container.store(g, std::memory_order_release);
}
void ObjectRef::setTag(uint32_t job, uint32_t round) const {
  header_->job.store(job, std::memory_order_relaxed);
  header_->round.store(round, std::memory_order_relaxed);
}
uint64_t ObjectRef::value() const { return header_->value.load(std::memory_order_acquire); }
void ObjectRef::setValue(uint64_t v) const { header_->value.store(v, std::memory_order_release); }
void ObjectRef::seal() const { header_->flags.fetch_or(kObjectSealed, std::memory_order_acq_rel); }
void ObjectRef::setLength(uint64_t length) {
  LIFL_CHECK(length <= header_->capacity, "object length beyond its capacity");
  header_->length.store(length, std::memory_order_release);
  handle_.length = length;
}

// ---- ObjectStore ----
ObjectStore::ObjectStore(std::unique_ptr<Impl> impl, std::string path, bool creator)
    : impl_(std::move(impl)), path_(std::move(path)), creator_(creator) {}

ObjectStore::~ObjectStore() {
  if (creator_) {
    impl_.reset();
    bip::file_mapping::remove(path_.c_str());
  }
}

Result<std::unique_ptr<ObjectStore>> ObjectStore::create(const StoreConfig& config) {
  uint64_t bytes = config.bytes;
  if (bytes < (16ull << 20)) return makeError(400, "invalid_config", "store size must be >= 16 MiB");
  if (config.hugepages) bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  bip::file_mapping::remove(config.path.c_str());
  auto impl = std::make_unique<Impl>();
  try {
    // Owner-only permissions: other users on the node must not read client updates.
    impl->segment = Segment(bip::create_only, config.path.c_str(), bytes, nullptr,
                            bip::permissions(0600));
    impl->root = impl->segment.find_or_construct<StoreRoot>("lifl.root")();
  } catch (const bip::interprocess_exception& e) {
    return internal("store_create_failed",
                    "cannot create the object store at " + config.path + ": " + e.what());
  }
  return std::unique_ptr<ObjectStore>(new ObjectStore(std::move(impl), config.path, true));
}

Result<std::unique_ptr<ObjectStore>> ObjectStore::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  try {
    impl->segment = Segment(bip::open_only, path.c_str());
    impl->root = impl->segment.find<StoreRoot>("lifl.root").first;
  } catch (const bip::interprocess_exception& e) {
    return internal("store_open_failed", "cannot open the object store " + path + ": " + e.what());
  }
  if (!impl->root || impl->root->magic != kRootMagic)
    return internal("store_open_failed", "segment " + path + " is not a LIFL object store");
  return std::unique_ptr<ObjectStore>(new ObjectStore(std::move(impl), path, false));
}

ObjectRef ObjectStore::refFor(ObjectHeader* h) const {
  return ObjectRef(h, reinterpret_cast<std::byte*>(h) + sizeof(ObjectHeader),
                   ObjectHandle{impl_->offsetOf(h), h->length.load(std::memory_order_acquire),
                                h->generation.load(std::memory_order_acquire)});
}

Result<ObjectRef> ObjectStore::allocate(uint64_t bytes, ObjectKind kind, InstanceId owner) {
  void* p = nullptr;
  try {
    p = impl_->segment.allocate_aligned(sizeof(ObjectHeader) + bytes, kAlign, std::nothrow);
  } catch (const bip::interprocess_exception&) {
    p = nullptr;
  }
  if (!p)
    return unavailable("store_full", "the object store has no room for " + std::to_string(bytes) +
                                         " more bytes; retry later");
  auto* h = new (p) ObjectHeader{};
  h->magic = kHeaderMagic;
  h->capacity = bytes;
  h->length.store(bytes);
  h->refcount.store(1);
  h->owner.store(owner);
  h->producer = owner;
  h->kind = static_cast<uint16_t>(kind);
  auto& root = *impl_->root;
  {
    bip::scoped_lock<RobustMutex> lock(root.listMutex);
    uint64_t self = impl_->offsetOf(h);
    h->next = root.head;
    h->prev = 0;
    if (root.head) impl_->at(root.head)->prev = self;
    root.head = self;
    // The generation is published last, under the lock: a concurrent reclaim walk never
    // sees a half-built object as live.
    h->generation.store(root.nextGeneration.fetch_add(1), std::memory_order_release);
  }
  return refFor(h);
}

Result<ObjectRef> ObjectStore::resolve(const ObjectHandle& handle) const {
  const uint64_t size = impl_->segment.get_size();
  if (handle.generation == 0 || handle.offset % kAlign != 0 ||
      handle.offset + sizeof(ObjectHeader) > size || handle.offset == 0)
    return makeError(410, "stale_object", "descriptor does not name an object in this store");
  auto* h = impl_->at(handle.offset);
  if (h->magic != kHeaderMagic ||
      h->generation.load(std::memory_order_acquire) != handle.generation)
    return makeError(410, "stale_object", "object was freed or replaced");
  if (handle.length > h->capacity || handle.offset + sizeof(ObjectHeader) + h->capacity > size)
    return makeError(410, "stale_object", "descriptor length beyond the object");
  return ObjectRef(h, reinterpret_cast<std::byte*>(h) + sizeof(ObjectHeader), handle);
}

void ObjectStore::retain(const ObjectRef& ref) {
  auto r = resolve(ref.handle());
  if (r) impl_->at(ref.handle().offset)->refcount.fetch_add(1, std::memory_order_relaxed);
}

void ObjectStore::release(const ObjectHandle& handle) {
  auto r = resolve(handle);
  if (!r) return;
  auto* h = impl_->at(handle.offset);
  uint32_t count = h->refcount.load(std::memory_order_acquire);
  do {
    if (count == 0) return;  // a concurrent release is freeing it
  } while (!h->refcount.compare_exchange_weak(count, count - 1, std::memory_order_acq_rel));
  if (count != 1) return;
  auto& root = *impl_->root;
  {
    bip::scoped_lock<RobustMutex> lock(root.listMutex);
    if (h->generation.load() != handle.generation) return;
    if (h->prev) impl_->at(h->prev)->next = h->next;
    else root.head = h->next;
    if (h->next) impl_->at(h->next)->prev = h->prev;
    h->generation.store(0, std::memory_order_release);
    h->magic = 0;
  }
  // A kill between the unlink above and this line leaks the block (never a live object):
  // the window is a few instructions, and the list, which reclaim trusts, stays exact.
  impl_->segment.deallocate(h);
}

void ObjectStore::forEach(const std::function<void(const ObjectRef&)>& visit) const {
  auto& root = *impl_->root;
  bip::scoped_lock<RobustMutex> lock(root.listMutex);
  for (uint64_t off = root.head; off != 0;) {
    auto* h = impl_->at(off);
    off = h->next;
    if (h->generation.load(std::memory_order_acquire) != 0) visit(refFor(h));
  }
}

std::vector<ObjectRef> ObjectStore::ownedBy(InstanceId owner) const {
  std::vector<ObjectRef> out;
  forEach([&](const ObjectRef& ref) {
    if (ref.owner() == owner) out.push_back(ref);
  });
  return out;
}

StoreStats ObjectStore::stats() const {
  // Counted from the live list rather than kept in counters: a process killed between
  // linking an object and bumping a counter would make counters drift forever.
  StoreStats s{impl_->segment.get_size(), impl_->segment.get_free_memory(), 0, 0};
  forEach([&](const ObjectRef& o) {
    s.liveObjects++;
    s.liveBytes += o.capacity();
  });
  return s;
}

std::byte* ObjectStore::base() const {
  return static_cast<std::byte*>(impl_->segment.get_address());
}
uint64_t ObjectStore::mappedBytes() const { return impl_->segment.get_size(); }

}  // namespace lifl::dataplane
