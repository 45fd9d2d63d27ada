# SGD steps through the trainer against PyTorch (tests/train/golden/, written by
# make_train_golden.py), with each kernel table: 20 for mini_alexnet, 5 for AlexNet (no
# 20-step AlexNet run keeps float32 PyTorch within 1e-5 of float64: see ALEXNET in
# make_train_golden.py). mini_alexnet: label 'train'. AlexNet:
# label 'slow' only (the double-accumulating reference backward takes minutes on it), and
# not in the sanitizer build. The .dN tests train on N logical devices (--devices N) and
# also check the result against one device's: 2 is the paper's split, 4 splits conv2's
# two channel groups between devices.
add_executable(test_steps ${CMAKE_CURRENT_LIST_DIR}/test_steps.c)
target_link_libraries(test_steps PRIVATE alexc_core)
foreach(_kernels ref cpu)
  add_test(NAME train.steps.${_kernels}.mini_alexnet
           COMMAND test_steps ${_kernels} ${CMAKE_CURRENT_LIST_DIR}/golden/mini_alexnet
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(train.steps.${_kernels}.mini_alexnet train)
  add_test(NAME train.steps.${_kernels}.mini_alexnet.d2
           COMMAND test_steps ${_kernels} ${CMAKE_CURRENT_LIST_DIR}/golden/mini_alexnet 2
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(train.steps.${_kernels}.mini_alexnet.d2 train)
  if(NOT ALEXC_SANITIZE)
    add_test(NAME train.steps.${_kernels}.alexnet
             COMMAND test_steps ${_kernels} ${CMAKE_CURRENT_LIST_DIR}/golden/alexnet
             WORKING_DIRECTORY ${ALEXC_ROOT})
    alexc_label(train.steps.${_kernels}.alexnet slow)
    set_tests_properties(train.steps.${_kernels}.alexnet PROPERTIES TIMEOUT 3600)
  endif()
endforeach()
add_test(NAME train.steps.cpu.mini_alexnet.d4
         COMMAND test_steps cpu ${CMAKE_CURRENT_LIST_DIR}/golden/mini_alexnet 4
         WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(train.steps.cpu.mini_alexnet.d4 train)
if(NOT ALEXC_SANITIZE)
  add_test(NAME train.steps.cpu.alexnet.d2
           COMMAND test_steps cpu ${CMAKE_CURRENT_LIST_DIR}/golden/alexnet 2
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(train.steps.cpu.alexnet.d2 slow)
endif()
