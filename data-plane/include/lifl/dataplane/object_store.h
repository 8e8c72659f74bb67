// The node's shared-memory object store: one segment per node (a file on tmpfs, or on
// hugetlbfs for hugepage backing, mapped with Boost.Interprocess), variable-size objects from
// a crash-consistent heap (shm_heap.h): instances may be killed inside allocate() or
// release() without corrupting anything. Every object has a 128-byte header with a generation
// (never reused), a reference count, an owner (the instance responsible for it), its producer, and
// the partial that contains it once it has been folded (DESIGN.md invariant 4). Objects are named
// across processes by (offset, length, generation) descriptors, never by pointers.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lifl/common/descriptor.h"
#include "lifl/common/error.h"

namespace lifl::dataplane {

struct StoreConfig {
  std::string path;  ///< the segment file, e.g. /dev/shm/lifl-<node>
  uint64_t bytes = 1ull << 30;
  bool hugepages = false;  ///< path is on hugetlbfs; size is rounded to 2 MiB
  /// Adopt a segment left at `path` by a previous agent of this node that died (same size,
  /// a valid heap) instead of replacing it, so its accepted updates can be recovered.
  bool adopt = false;
  /// The group of the function instances' user (functions.user): the segment is then 0660,
  /// that group's, so that instances running as that user can map it; -1: owner only (0600).
  int64_t instanceGroup = -1;
};

enum class ObjectKind : uint16_t { Update = 1, Partial = 2, Model = 3, Event = 4, Control = 5 };

/// Flags in the object header.
inline constexpr uint16_t kObjectSealed = 1;  ///< contents final (a partial ready for its parent)

struct ObjectHandle {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t generation = 0;
};

struct ObjectHeader;

/// A view of a live object in this process's mapping. It does not hold a reference: lifetime
/// is managed by the explicit refcount and owner protocol.
class ObjectRef {
 public:
  ObjectRef() = default;
  ObjectRef(ObjectHeader* header, std::byte* data, ObjectHandle handle)
      : header_(header), data_(data), handle_(handle) {}

  std::byte* data() const { return data_; }
  uint64_t size() const { return handle_.length; }
  uint64_t capacity() const;
  const ObjectHandle& handle() const { return handle_; }
  ObjectKind kind() const;
  InstanceId owner() const;
  InstanceId producer() const;
  uint64_t container() const;
  bool sealed() const;
  uint32_t round() const;
  uint32_t job() const;
  uint32_t refcount() const;
  /// Kind-specific value: an update's weight (ce-numexamples), kept for re-delivery.
  uint64_t value() const;
  void setValue(uint64_t value) const;
  /// An update's client key (hash of ce-source and ce-id), carried into partials.
  uint64_t clientKey() const;
  void setClientKey(uint64_t key) const;
  /// An update's staleness: global model versions between the one its client trained from
  /// and the one it is applied to (fedbuff; 0 otherwise). Read by the leaf, kept for recovery.
  uint32_t staleness() const;
  void setStaleness(uint32_t versions) const;

  void setOwner(InstanceId owner) const;
  void setContainer(uint64_t partialGeneration) const;
  void setTag(uint32_t job, uint32_t round) const;
  /// Publishes the contents (release order) and marks the object final.
  void seal() const;
  /// Sets the valid length (<= capacity), e.g. after a chunked body shorter than its bound.
  void setLength(uint64_t length);
  /// Maps the payload's pages into this process in one call (MADV_POPULATE_READ/WRITE)
  /// before a full pass over it: one fault per 4 KiB page is most of the CPU of ingesting
  /// a large update otherwise (bench_ingest). Best effort.
  void prefault(bool forWrite) const;
  /// Fills a descriptor's object fields.
  void describe(Descriptor& d) const {
    d.offset = handle_.offset;
    d.length = handle_.length;
    d.generation = handle_.generation;
  }

 private:
  ObjectHeader* header_ = nullptr;
  std::byte* data_ = nullptr;
  ObjectHandle handle_;
};

struct StoreStats {
  uint64_t capacityBytes = 0;
  uint64_t freeBytes = 0;
  uint64_t liveObjects = 0;
  uint64_t liveBytes = 0;
};

class ObjectStore {
 public:
  /// Creates the node's segment (the agent does this once), replacing a stale file.
  static Result<std::unique_ptr<ObjectStore>> create(const StoreConfig& config);
  /// Maps an existing segment (function instances).
  static Result<std::unique_ptr<ObjectStore>> open(const std::string& path);
  ~ObjectStore();
  ObjectStore(const ObjectStore&) = delete;
  ObjectStore& operator=(const ObjectStore&) = delete;

  /// Allocates an object of `bytes` payload with refcount 1, owned by `owner`.
  /// @return 503 store_full when the segment has no room.
  Result<ObjectRef> allocate(uint64_t bytes, ObjectKind kind, InstanceId owner);
  /// Resolves a descriptor; fails (410 stale_object) when the object was freed or reused.
  Result<ObjectRef> resolve(const ObjectHandle& handle) const;
  Result<ObjectRef> resolve(const Descriptor& d) const {
    return resolve(ObjectHandle{d.offset, d.length, d.generation});
  }
  void retain(const ObjectRef& ref);
  /// Drops one reference; frees the object when the count reaches zero. Releasing a stale
  /// handle is a no-op, which makes re-delivered releases idempotent.
  void release(const ObjectHandle& handle);

  /// Live objects owned by `owner` (the agent's reclaim walk after an instance dies).
  std::vector<ObjectRef> ownedBy(InstanceId owner) const;
  /// Finishes the allocations and frees that a dead instance left half done.
  /// @pre the instance is dead. @return objects freed.
  uint32_t reclaimIncomplete(InstanceId dead);
  /// Visits every live object under the list lock. Keep the visitor short.
  void forEach(const std::function<void(const ObjectRef&)>& visit) const;

  StoreStats stats() const;
  /// stats()'s capacity and free bytes alone, without walking the live objects.
  uint64_t capacityBytes() const;
  uint64_t freeBytes() const;
  /// True when create() adopted a previous agent's segment (StoreConfig::adopt).
  bool adopted() const { return adopted_; }
  const std::string& path() const { return path_; }
  /// Base address of this process's mapping (for zero-copy registration, e.g. cudaHostRegister).
  std::byte* base() const;
  uint64_t mappedBytes() const;

 private:
  struct Impl;
  ObjectStore(std::unique_ptr<Impl> impl, std::string path, bool owner);
  ObjectRef refFor(ObjectHeader* header) const;

  std::unique_ptr<Impl> impl_;
  std::string path_;
  bool creator_ = false;
  bool adopted_ = false;
};

}  // namespace lifl::dataplane
