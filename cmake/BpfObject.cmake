# bpf_object(<name> <source.bpf.c>): compiles a BPF program with clang and generates its
# bpftool skeleton header <name>.skel.h, exposed through the INTERFACE target <name>_skel.
find_program(BPF_CLANG clang REQUIRED)
find_program(BPFTOOL bpftool PATHS /usr/sbin /sbin REQUIRED)

# vmlinux.h comes from the running kernel's BTF, once, at configure time.
set(LIFL_VMLINUX_H ${CMAKE_BINARY_DIR}/bpf/vmlinux.h)
if(NOT EXISTS ${LIFL_VMLINUX_H})
  file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/bpf)
  execute_process(COMMAND ${BPFTOOL} btf dump file /sys/kernel/btf/vmlinux format c
                  OUTPUT_FILE ${LIFL_VMLINUX_H} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    file(REMOVE ${LIFL_VMLINUX_H})
    message(FATAL_ERROR "bpftool could not dump /sys/kernel/btf/vmlinux")
  endif()
endif()

function(bpf_object name source)
  set(_src ${CMAKE_CURRENT_SOURCE_DIR}/${source})
  set(_obj ${CMAKE_BINARY_DIR}/bpf/${name}.bpf.o)
  set(_skel ${CMAKE_BINARY_DIR}/bpf/${name}.skel.h)
  file(GLOB _headers ${CMAKE_CURRENT_SOURCE_DIR}/*.h ${CMAKE_CURRENT_SOURCE_DIR}/include/lifl/ebpf/*.h)
  add_custom_command(
    OUTPUT ${_obj}
    COMMAND ${BPF_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_x86
            -I${CMAKE_BINARY_DIR}/bpf -I${CMAKE_CURRENT_SOURCE_DIR}
            -I${CMAKE_CURRENT_SOURCE_DIR}/include -c ${_src} -o ${_obj}
    DEPENDS ${_src} ${_headers} ${LIFL_VMLINUX_H}
    COMMENT "BPF ${source}")
  add_custom_command(
    OUTPUT ${_skel}
    COMMAND ${BPFTOOL} gen skeleton ${_obj} name ${name}_bpf > ${_skel}
    DEPENDS ${_obj}
    COMMENT "Skeleton ${name}.skel.h")
  add_custom_target(${name}_skel_gen DEPENDS ${_skel})
  add_library(${name}_skel INTERFACE)
  add_dependencies(${name}_skel ${name}_skel_gen)
  target_include_directories(${name}_skel INTERFACE ${CMAKE_BINARY_DIR}/bpf)
  target_link_libraries(${name}_skel INTERFACE PkgConfig::LIBBPF)
endfunction()
