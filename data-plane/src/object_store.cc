#include "lifl/dataplane/object_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/file_mapping.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <cstring>

#include "lifl/common/unique_fd.h"
#include "lifl/dataplane/shm_heap.h"

namespace lifl::dataplane {

namespace bip = boost::interprocess;

namespace {
constexpr uint64_t kHeaderMagic = 0x4c49464c4f424a31ull;  // "LIFLOBJ1"
constexpr uint64_t kHugePage = 2ull << 20;
constexpr uint32_t kDefaultSlots = 1u << 16;  // live objects per node
}  // namespace

struct alignas(64) ObjectHeader {
  uint64_t magic;
  std::atomic<uint64_t> generation;  // 0 while being built or freed
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
  uint32_t slot;      // index in the heap's live table
  uint8_t sizeClass;  // the heap block's class
  uint8_t pad[3];
  std::atomic<uint64_t> value;      // kind-specific: an update's weight (ce-numexamples)
  std::atomic<uint64_t> clientKey;  // an update's hash of ce-source and ce-id
  std::atomic<uint32_t> staleness;  // an update's global versions behind (fedbuff)
  uint32_t pad2;
  uint64_t reserved[4];
};
static_assert(sizeof(ObjectHeader) == 128, "object header is two cache lines");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared atomics must be lock-free");

struct ObjectStore::Impl {
  bip::file_mapping file;
  bip::mapped_region region;
  ShmHeap* heap = nullptr;

  std::byte* base() const { return static_cast<std::byte*>(region.get_address()); }
  ObjectHeader* at(uint64_t offset) const {
    return reinterpret_cast<ObjectHeader*>(base() + offset);
  }
  uint64_t offsetOf(const ObjectHeader* h) const {
    return static_cast<uint64_t>(reinterpret_cast<const std::byte*>(h) - base());
  }
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
uint64_t ObjectRef::clientKey() const { return header_->clientKey.load(std::memory_order_acquire); }
void ObjectRef::setClientKey(uint64_t k) const {
  header_->clientKey.store(k, std::memory_order_release);
}
uint32_t ObjectRef::staleness() const { return header_->staleness.load(std::memory_order_acquire); }
void ObjectRef::setStaleness(uint32_t versions) const {
  header_->staleness.store(versions, std::memory_order_release);
}
uint64_t ObjectRef::value() const { return header_->value.load(std::memory_order_acquire); }
void ObjectRef::setValue(uint64_t v) const { header_->value.store(v, std::memory_order_release); }
void ObjectRef::prefault(bool forWrite) const {
  static const uintptr_t kPage = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(data_) & ~(kPage - 1);
  const auto end = reinterpret_cast<uintptr_t>(data_) + handle_.length;
  if (end > begin)
    (void)::madvise(reinterpret_cast<void*>(begin), end - begin,
                    forWrite ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
}

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
  if (bytes < (16ull << 20))
    return makeError(400, "invalid_config", "store size must be >= 16 MiB");
  if (config.hugepages) bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  // The instances' group, when they run as a user of their own (also for an adopted segment).
  auto shareWithInstances = [&]() -> Result<void> {
    if (config.instanceGroup >= 0 && (::chown(config.path.c_str(), static_cast<uid_t>(-1),
                                              static_cast<gid_t>(config.instanceGroup)) != 0 ||
                                      ::chmod(config.path.c_str(), 0660) != 0))
      return systemError("give the object store " + config.path + " to the instances' group",
                         errno);
    return success();
  };
  if (config.adopt) {
    auto previous = open(config.path);
    if (previous && previous.value()->mappedBytes() == bytes) {
      previous.value()->creator_ = true;  // ours now: removed at a clean stop
      previous.value()->adopted_ = true;
      LIFL_TRYV(shareWithInstances());
      return previous;
    }
  }
  bip::file_mapping::remove(config.path.c_str());
  {  // owner-only permissions (and the instances' group, when they run as a user of their
     // own): other users on the node must not read client updates
    UniqueFd fd(::open(config.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd) return systemError("create the object store " + config.path, errno);
    LIFL_TRYV(shareWithInstances());
    if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0)
      return systemError("size the object store " + config.path, errno);
  }
  auto impl = std::make_unique<Impl>();
  try {
    impl->file = bip::file_mapping(config.path.c_str(), bip::read_write);
    impl->region = bip::mapped_region(impl->file, bip::read_write, 0, bytes);
  } catch (const bip::interprocess_exception& e) {
    bip::file_mapping::remove(config.path.c_str());
    return internal("store_create_failed",
                    "cannot map the object store " + config.path + ": " + e.what());
  }
  impl->heap = ShmHeap::format(impl->base(), bytes, kDefaultSlots);
  if (!impl->heap) return makeError(400, "invalid_config", "store too small for its object table");
  return std::unique_ptr<ObjectStore>(new ObjectStore(std::move(impl), config.path, true));
}

Result<std::unique_ptr<ObjectStore>> ObjectStore::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  try {
    impl->file = bip::file_mapping(path.c_str(), bip::read_write);
    impl->region = bip::mapped_region(impl->file, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    return internal("store_open_failed", "cannot open the object store " + path + ": " + e.what());
  }
  impl->heap = ShmHeap::attach(impl->base(), impl->region.get_size());
  if (!impl->heap)
    return internal("store_open_failed", "segment " + path + " is not a LIFL object store");
  return std::unique_ptr<ObjectStore>(new ObjectStore(std::move(impl), path, false));
}

ObjectRef ObjectStore::refFor(ObjectHeader* h) const {
  return ObjectRef(h, reinterpret_cast<std::byte*>(h) + sizeof(ObjectHeader),
                   ObjectHandle{impl_->offsetOf(h), h->length.load(std::memory_order_acquire),
                                h->generation.load(std::memory_order_acquire)});
}

Result<ObjectRef> ObjectStore::allocate(uint64_t bytes, ObjectKind kind, InstanceId owner) {
  uint8_t sizeClass = 0;
  const uint64_t off = impl_->heap->allocate(sizeof(ObjectHeader) + bytes, sizeClass);
  if (off == 0)
    return unavailable("store_full", "the object store has no room for " + std::to_string(bytes) +
                                         " more bytes; retry later");
  auto* h = new (impl_->at(off)) ObjectHeader{};
  h->magic = kHeaderMagic;
  h->capacity = bytes;
  h->length.store(bytes);
  h->refcount.store(1);
  h->owner.store(owner);
  h->producer = owner;
  h->kind = static_cast<uint16_t>(kind);
  h->sizeClass = sizeClass;
  h->slot = impl_->heap->registerLive(off);
  if (h->slot == UINT32_MAX) {
    h->magic = 0;
    impl_->heap->free(off, sizeClass);
    return unavailable("store_full",
                       "the object store's table of live objects is full; retry later");
  }
  // Published last: until it has a generation the object is invisible to descriptors.
  h->generation.store(impl_->heap->nextGeneration(), std::memory_order_release);
  return refFor(h);
}

Result<ObjectRef> ObjectStore::resolve(const ObjectHandle& handle) const {
  const uint64_t size = impl_->region.get_size();
  // Written so that no sum can wrap: a descriptor's fields come from other processes
  // (tests/fuzz found an offset near 2^64 that wrapped past this check).
  if (handle.generation == 0 || handle.offset % ShmHeap::kAlign != 0 || handle.offset == 0 ||
      handle.offset > size || size - handle.offset < sizeof(ObjectHeader))
    return makeError(410, "stale_object", "descriptor does not name an object in this store");
  auto* h = impl_->at(handle.offset);
  if (h->magic != kHeaderMagic ||
      h->generation.load(std::memory_order_acquire) != handle.generation)
    return makeError(410, "stale_object", "object was freed or replaced");
  if (handle.length > h->capacity || h->capacity > size - handle.offset - sizeof(ObjectHeader))
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
  // Stale first (descriptors stop resolving), then out of the live table, then back to the
  // heap. A kill in between leaks the block; it never corrupts anything.
  uint64_t gen = handle.generation;
  if (!h->generation.compare_exchange_strong(gen, 0, std::memory_order_acq_rel)) return;
  h->magic = 0;
  impl_->heap->unregisterLive(h->slot, handle.offset);
  impl_->heap->free(handle.offset, h->sizeClass);
}

void ObjectStore::forEach(const std::function<void(const ObjectRef&)>& visit) const {
  impl_->heap->forEachLive([&](uint64_t off) {
    auto* h = impl_->at(off);
    if (h->magic == kHeaderMagic && h->generation.load(std::memory_order_acquire) != 0)
      visit(refFor(h));
  });
}

uint32_t ObjectStore::reclaimIncomplete(InstanceId dead) {
  uint32_t reclaimed = 0;
  impl_->heap->forEachLive([&](uint64_t off) {
    auto* h = impl_->at(off);
    if (h->owner.load() != dead) return;
    // Generation 0 in the live table: allocate() or release() was cut short by the death.
    // A generation with no reference left: release() died between dropping the last
    // reference and retiring the generation; it is finished here (the exchange decides
    // against any other release of it, as in release()).
    uint64_t gen = h->generation.load(std::memory_order_acquire);
    if (gen != 0 && (h->refcount.load(std::memory_order_acquire) != 0 ||
                     !h->generation.compare_exchange_strong(gen, 0, std::memory_order_acq_rel)))
      return;
    h->magic = 0;
    impl_->heap->unregisterLive(h->slot, off);
    impl_->heap->free(off, h->sizeClass);
    ++reclaimed;
  });
  return reclaimed;
}

std::vector<ObjectRef> ObjectStore::ownedBy(InstanceId owner) const {
  std::vector<ObjectRef> out;
  forEach([&](const ObjectRef& ref) {
    if (ref.owner() == owner) out.push_back(ref);
  });
  return out;
}

StoreStats ObjectStore::stats() const {
  StoreStats s{capacityBytes(), freeBytes(), 0, 0};
  forEach([&](const ObjectRef& o) {
    s.liveObjects++;
    s.liveBytes += o.capacity();
  });
  return s;
}

uint64_t ObjectStore::capacityBytes() const { return impl_->heap->capacity(); }
uint64_t ObjectStore::freeBytes() const { return impl_->heap->freeBytes(); }

std::byte* ObjectStore::base() const { return impl_->base(); }
uint64_t ObjectStore::mappedBytes() const { return impl_->region.get_size(); }

}  // namespace lifl::dataplane
