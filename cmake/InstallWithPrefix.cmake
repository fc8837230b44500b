# proctor_install_with_prefix(TEMPLATE DESTINATION COMPONENT): installs TEMPLATE (a file made
# at configure time) into DESTINATION, with each @INSTALL_PREFIX@ in it replaced by the prefix
# the install runs with. So `cmake --install build --prefix P` writes P, and the Debian
# packages (made by CPack, prefix /usr) write /usr, whatever prefix the tree was configured for.
function(proctor_install_with_prefix template destination component)
  get_filename_component(name ${template} NAME)
  set(staged ${CMAKE_CURRENT_BINARY_DIR}/installed/${component}/${name})
  install(CODE "
    file(READ \"${template}\" text)
    string(REPLACE \"@INSTALL_PREFIX@\" \"\${CMAKE_INSTALL_PREFIX}\" text \"\${text}\")
    file(WRITE \"${staged}\" \"\${text}\")"
    COMPONENT ${component})
  install(FILES ${staged} DESTINATION ${destination} COMPONENT ${component})
endfunction()
