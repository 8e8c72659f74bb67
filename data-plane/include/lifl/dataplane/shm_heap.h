// A crash-consistent heap inside a shared mapping. Function instances allocate and free
// store objects, and the platform kills instances (crashes, kill -9, scale-down) at any
// instruction. A conventional allocator (Boost.Interprocess's rbtree) is torn by a death
// inside one of its multi-step tree updates, robust lock or not (we saw the parent segfault
// in the tree after such a kill). Here every shared update is one atomic operation:
//
//  - blocks come in size classes (four per power of two, so at most 25% slack of address
//    space, and none of memory: untouched tail pages are never faulted in);
//  - each class has a lock-free free list (a Treiber stack with a tagged head against ABA);
//  - new blocks are carved from a bump pointer with a CAS; when it is exhausted a block of a
//    larger class is used;
//  - live objects are registered in a fixed table of atomic slots (one CAS in, one store
//    out), which is what reclaim and statistics walk.
//
// A process killed between two of these steps can leak the one block it held (bounded,
// never a corruption); the agent's reclaim finishes the objects a dead owner left
// half-built or half-freed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace lifl::dataplane {

class ShmHeap {
 public:
  static constexpr uint64_t kAlign = 64;
  static constexpr uint32_t kClasses = 128;  ///< 256 B .. 2^40 B, four classes per octave

  /// Formats a heap over [base, base+bytes) with room for `slots` live objects.
  static ShmHeap* format(void* base, uint64_t bytes, uint32_t slots);
  /// Attaches to a heap formatted by another process; nullptr if not a heap.
  static ShmHeap* attach(void* base, uint64_t bytes);

  /// A block of at least `bytes`; 0 when the heap is full. The block's class is returned
  /// through `sizeClass` and must be passed back to free().
  uint64_t allocate(uint64_t bytes, uint8_t& sizeClass);
  void free(uint64_t offset, uint8_t sizeClass);
  static uint64_t classBytes(uint8_t sizeClass);

  /// Registers a live block; returns its slot, or UINT32_MAX when the table is full.
  uint32_t registerLive(uint64_t offset);
  void unregisterLive(uint32_t slot, uint64_t offset);
  /// Calls visit(offset) for every registered block (a racy but safe snapshot).
  template <class F>
  void forEachLive(F&& visit) const {
    const auto* table = slots();
    for (uint32_t i = 0; i < slotCount_; ++i)
      if (uint64_t off = table[i].load(std::memory_order_acquire)) visit(off);
  }

  uint64_t nextGeneration() { return generation_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t capacity() const { return end_ - heapStart_; }
  /// Bytes never carved plus bytes on free lists.
  uint64_t freeBytes() const;

 private:
  std::atomic<uint64_t>* slots() const;
  uint64_t pop(uint32_t c);
  void push(uint32_t c, uint64_t offset);

  uint64_t magic_;
  uint64_t end_;        ///< offset one past the heap
  uint64_t heapStart_;  ///< offset of the first block
  uint64_t slotsOffset_;
  uint32_t slotCount_;
  uint32_t pad_;
  std::atomic<uint64_t> bump_;
  std::atomic<uint64_t> generation_;
  std::atomic<uint32_t> slotHint_;
  std::atomic<int64_t> freeListBytes_;
  std::atomic<uint64_t> freeLists_[kClasses];
};

}  // namespace lifl::dataplane
