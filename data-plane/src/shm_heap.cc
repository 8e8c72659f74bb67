#include "lifl/dataplane/shm_heap.h"

#include <bit>
#include <new>

namespace lifl::dataplane {
namespace {

constexpr uint64_t kMagic = 0x4c49464c48454150ull;  // "LIFLHEAP"
constexpr uint32_t kTagShift = 34;                  // head = tag << 34 | offset / 64
constexpr uint64_t kOffsetMask = (uint64_t{1} << kTagShift) - 1;

/// The first 8 bytes of a free block link it to the next one on its list.
struct FreeBlock {
  std::atomic<uint64_t> next;
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);

inline std::byte* at(const ShmHeap* heap, uint64_t offset) {
  return reinterpret_cast<std::byte*>(const_cast<ShmHeap*>(heap)) + offset;
}

}  // namespace

uint64_t ShmHeap::classBytes(uint8_t c) {
  // 2^(8 + c/4) * (4 + c%4) / 4: 256, 320, 384, 448, 512, 640, ...
  return (uint64_t{1} << (8 + c / 4)) / 4 * (4 + c % 4);
}

ShmHeap* ShmHeap::format(void* base, uint64_t bytes, uint32_t slots) {
  auto* heap = new (base) ShmHeap{};
  heap->magic_ = 0;
  heap->end_ = bytes;
  heap->slotsOffset_ = (sizeof(ShmHeap) + kAlign - 1) / kAlign * kAlign;
  heap->slotCount_ = slots;
  heap->heapStart_ = (heap->slotsOffset_ + uint64_t{slots} * 8 + kAlign - 1) / kAlign * kAlign;
  if (heap->heapStart_ >= bytes) return nullptr;
  auto* table = heap->slots();
  for (uint32_t i = 0; i < slots; ++i) new (&table[i]) std::atomic<uint64_t>(0);
  heap->bump_.store(heap->heapStart_);
  heap->generation_.store(1);
  heap->slotHint_.store(0);
  heap->freeListBytes_.store(0);
  for (auto& l : heap->freeLists_) l.store(0);
  std::atomic_thread_fence(std::memory_order_release);
  heap->magic_ = kMagic;
  return heap;
}

ShmHeap* ShmHeap::attach(void* base, uint64_t bytes) {
  auto* heap = static_cast<ShmHeap*>(base);
  if (bytes < sizeof(ShmHeap) || heap->magic_ != kMagic || heap->end_ != bytes) return nullptr;
  return heap;
}

std::atomic<uint64_t>* ShmHeap::slots() const {
  return reinterpret_cast<std::atomic<uint64_t>*>(at(this, slotsOffset_));
}

uint64_t ShmHeap::pop(uint32_t c) {
  uint64_t head = freeLists_[c].load(std::memory_order_acquire);
  for (;;) {
    const uint64_t off = (head & kOffsetMask) * kAlign;
    if (off == 0) return 0;
    // The block may be popped and reused by another process meanwhile: then `next` is
    // garbage, but the tag has moved on and the CAS fails.
    const uint64_t next =
        reinterpret_cast<FreeBlock*>(at(this, off))->next.load(std::memory_order_relaxed);
    const uint64_t tagged = (((head >> kTagShift) + 1) << kTagShift) | (next / kAlign);
    if (freeLists_[c].compare_exchange_weak(head, tagged, std::memory_order_acq_rel)) {
      freeListBytes_.fetch_sub(static_cast<int64_t>(classBytes(static_cast<uint8_t>(c))),
                               std::memory_order_relaxed);
      return off;
    }
  }
}

void ShmHeap::push(uint32_t c, uint64_t offset) {
  auto* block = reinterpret_cast<FreeBlock*>(at(this, offset));
  uint64_t head = freeLists_[c].load(std::memory_order_relaxed);
  for (;;) {
    block->next.store((head & kOffsetMask) * kAlign, std::memory_order_relaxed);
    const uint64_t tagged = (((head >> kTagShift) + 1) << kTagShift) | (offset / kAlign);
    if (freeLists_[c].compare_exchange_weak(head, tagged, std::memory_order_release,
                                            std::memory_order_relaxed))
      break;
  }
  freeListBytes_.fetch_add(static_cast<int64_t>(classBytes(static_cast<uint8_t>(c))),
                           std::memory_order_relaxed);
}

uint64_t ShmHeap::allocate(uint64_t bytes, uint8_t& sizeClass) {
  uint32_t c = 0;
  while (c < kClasses && classBytes(static_cast<uint8_t>(c)) < bytes) ++c;
  if (c == kClasses) return 0;
  if (uint64_t off = pop(c)) {
    sizeClass = static_cast<uint8_t>(c);
    return off;
  }
  const uint64_t need = classBytes(static_cast<uint8_t>(c));
  uint64_t cur = bump_.load(std::memory_order_relaxed);
  while (cur + need <= end_) {
    if (bump_.compare_exchange_weak(cur, cur + need, std::memory_order_acq_rel)) {
      sizeClass = static_cast<uint8_t>(c);
      return cur;
    }
  }
  // The bump region is exhausted: reuse a free block of a larger class as it is.
  for (uint32_t larger = c + 1; larger < kClasses; ++larger) {
    if (uint64_t off = pop(larger)) {
      sizeClass = static_cast<uint8_t>(larger);
      return off;
    }
  }
  return 0;
}

void ShmHeap::free(uint64_t offset, uint8_t sizeClass) { push(sizeClass, offset); }

uint32_t ShmHeap::registerLive(uint64_t offset) {
  auto* table = slots();
  const uint32_t start = slotHint_.fetch_add(1, std::memory_order_relaxed);
  for (uint32_t i = 0; i < slotCount_; ++i) {
    const uint32_t s = (start + i) % slotCount_;
    uint64_t expected = 0;
    if (table[s].load(std::memory_order_relaxed) == 0 &&
        table[s].compare_exchange_strong(expected, offset, std::memory_order_acq_rel))
      return s;
  }
  return UINT32_MAX;
}

void ShmHeap::unregisterLive(uint32_t slot, uint64_t offset) {
  if (slot >= slotCount_) return;
  uint64_t expected = offset;
  slots()[slot].compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

uint64_t ShmHeap::freeBytes() const {
  const int64_t lists = freeListBytes_.load(std::memory_order_relaxed);
  return end_ - bump_.load(std::memory_order_relaxed) +
         static_cast<uint64_t>(lists > 0 ? lists : 0);
}

}  // namespace lifl::dataplane
