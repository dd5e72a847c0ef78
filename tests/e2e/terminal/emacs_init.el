;;; emacs_init.el --- Emacs 28 + eglot in a terminal, for the typing test  -*- lexical-binding: t -*-

;; eglot set up as the README says, for text files.  Instrumentation for the test, not
;; part of what a user configures: agents' states go to FORKYARD_TEST_STATES, and three
;; command agents are dispatched once eglot is connected.

;;; Code:

(require 'json)
;; Not the test's business: compiler warnings of installed packages in their own window,
;; and words cut at the window's edge (the test looks for each typed word on the screen).
(setq native-comp-async-report-warnings-errors 'silent
      warning-minimum-level :error)
(global-visual-line-mode 1)
(require 'eglot)

(setq eglot-server-programs
      `((text-mode . ,(append (json-parse-string (getenv "FORKYARD_TEST_SERVER_CMD")
                                                 :array-type 'list)
                              nil))))
(add-hook 'text-mode-hook #'eglot-ensure)

(cl-defmethod eglot-handle-notification
  (_server (_method (eql forkyard/agent/changed)) &key agent &allow-other-keys)
  (with-temp-buffer
    (insert (format "%d %s\n" (plist-get agent :number) (plist-get agent :state)))
    (append-to-file (point-min) (point-max) (getenv "FORKYARD_TEST_STATES"))))

(defvar forkyard-test-dispatched nil)
(add-hook 'eglot-managed-mode-hook
          (lambda ()
            (when (and (eglot-current-server) (not forkyard-test-dispatched))
              (setq forkyard-test-dispatched t)
              (dolist (task (json-parse-string (getenv "FORKYARD_TEST_TASKS")
                                               :array-type 'list))
                (jsonrpc-async-request (eglot-current-server) :workspace/executeCommand
                                       `(:command "forkyard.dispatch" :arguments [,task])
                                       :success-fn #'ignore)))))

;;; emacs_init.el ends here
