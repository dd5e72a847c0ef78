;;; review.el --- the Forkyard review flow in Emacs 28 + eglot 1.9  -*- lexical-binding: t -*-

;; Run as `FORKYARD_TEST_CONFIG=config.json emacs --batch -l review.el'.  It does what a
;; user does: open a file, dispatch an agent, wait for its hints, apply one hunk with the
;; quickfix, refuse then accept "Apply agent #N to this file", and undo.  Every
;; observation goes to the JSON result file that pytest asserts on; the exit status is
;; non-zero when a step failed or timed out.
;;
;; Batch Emacs has no command loop, so where a user's Emacs does something between two
;; commands, this script does it explicitly and says so: `post-command-hook' (eglot-ensure
;; connects from there), undo boundaries, and idle timers (eglot sends didChange from one).

;;; Code:

(require 'cl-lib)
(require 'json)
(require 'eglot)

(defvar forkyard-test-config
  (let ((json-object-type 'alist) (json-array-type 'list) (json-key-type 'symbol))
    (json-read-file (getenv "FORKYARD_TEST_CONFIG"))))

(defun forkyard-test-option (key)
  (alist-get key forkyard-test-config))

(defvar forkyard-test-result nil "Alist of observations, written as JSON at the end.")
(defvar forkyard-test-messages nil "window/showMessage texts, newest first.")
(defvar forkyard-test-prompts nil "Questions eglot asked the user, newest first.")
(defvar forkyard-test-commands nil "workspace/executeCommand results, newest first.")
(defvar forkyard-test-answer t "How the user answers eglot's \"Proceed?\" question.")
(defvar forkyard-test-choice nil "The title the user picks from eglot's action menu.")

(defun forkyard-test-note (key value)
  (setf (alist-get key forkyard-test-result) value))

(defun forkyard-test-wait (what condition)
  "Wait until CONDITION returns non-nil, reading the server meanwhile.
Fail with WHAT after the configured timeout."
  (let ((deadline (+ (float-time) (/ (forkyard-test-option 'timeout_ms) 1000.0)))
        value)
    (while (not (setq value (funcall condition)))
      (when (> (float-time) deadline)
        (error "Timed out waiting for %s" what))
      (accept-process-output nil 0.02))
    value))

(defun forkyard-test-go-idle ()
  "Run the idle timers, as Emacs does when the user pauses.
Batch Emacs never becomes idle by itself."
  (dolist (timer (copy-sequence timer-idle-list))
    (timer-event-handler timer)))

(defun forkyard-test-end-command ()
  "What the command loop does after each command: an undo boundary."
  (undo-boundary))

(defun forkyard-test-text ()
  (save-restriction (widen) (buffer-substring-no-properties (point-min) (point-max))))

(defun forkyard-test-hints ()
  "The buffer's Flymake diagnostics that come from Forkyard, in buffer order."
  (let (found)
    (dolist (diag (flymake-diagnostics (point-min) (point-max)))
      (let ((lsp (alist-get 'eglot-lsp-diag (flymake-diagnostic-data diag))))
        (when (equal (plist-get lsp :source) "forkyard")
          (push diag found))))
    (sort found (lambda (a b) (< (flymake-diagnostic-beg a) (flymake-diagnostic-beg b))))))

(defun forkyard-test-describe (diag)
  (let* ((beg (flymake-diagnostic-beg diag))
         (end (flymake-diagnostic-end diag))
         (lsp (alist-get 'eglot-lsp-diag (flymake-diagnostic-data diag)))
         (range (plist-get lsp :range)))
    (save-excursion
      (goto-char beg)
      `((line . ,(1- (line-number-at-pos beg)))
        (beg_column . ,(- beg (line-beginning-position)))
        (end_column . ,(- end (line-beginning-position)))
        (lsp_start_character . ,(plist-get (plist-get range :start) :character))
        (lsp_end_character . ,(plist-get (plist-get range :end) :character))
        (type . ,(symbol-name (flymake-diagnostic-type diag)))
        (text . ,(flymake-diagnostic-text diag))))))

(defun forkyard-test-line-text ()
  (buffer-substring-no-properties (line-beginning-position) (line-end-position)))

;; What the user sees and answers.
(cl-defmethod eglot-handle-notification :before
  (_server (_method (eql window/showMessage)) &key _type message)
  (push message forkyard-test-messages))

(advice-add 'y-or-n-p :override
            (lambda (prompt)
              (push prompt forkyard-test-prompts)
              forkyard-test-answer)
            '((name . forkyard-test-answer)))

(advice-add 'completing-read :override
            (lambda (prompt collection &rest _)
              (push prompt forkyard-test-prompts)
              (let ((titles (mapcar (lambda (c) (if (consp c) (car c) c)) collection)))
                (forkyard-test-note 'menu (vconcat titles))
                (or (car (member forkyard-test-choice titles))
                    (error "No %S in the menu %S" forkyard-test-choice titles))))
            '((name . forkyard-test-choice)))

(advice-add 'eglot-execute-command :around
            (lambda (run server command arguments)
              (condition-case err
                  (let ((result (funcall run server command arguments)))
                    (push `((command . ,(symbol-name command)) (result . ,result))
                          forkyard-test-commands)
                    result)
                (error
                 (push `((command . ,(symbol-name command))
                         (error . ,(error-message-string err)))
                       forkyard-test-commands)
                 (signal (car err) (cdr err)))))
            '((name . forkyard-test-commands)))

(defun forkyard-test-code-action (kind)
  "`M-x eglot-code-actions' on the current line, asking for actions of KIND."
  ;; A keyboard event, so that eglot offers its menu through `completing-read'.
  (let ((last-nonmenu-event ?\r))
    (eglot-code-actions (line-beginning-position) (line-end-position) kind t))
  (forkyard-test-end-command))

(defun forkyard-test-scenario ()
  (setq eglot-server-programs
        `((python-mode . ,(forkyard-test-option 'server_cmd))))
  (find-file (forkyard-test-option 'file))
  (eglot-ensure)
  (run-hooks 'post-command-hook)
  (forkyard-test-wait "eglot to connect" (lambda () eglot--managed-mode))
  (let ((server (eglot-current-server)))
    (forkyard-test-note 'position_encoding
                        (plist-get (eglot--capabilities server) :positionEncoding))
    (forkyard-test-note 'resolve_provider
                        (plist-get (plist-get (eglot--capabilities server)
                                              :codeActionProvider)
                                   :resolveProvider))

    (eglot-execute-command server 'forkyard.dispatch (vector (forkyard-test-option 'task)))
    (let* ((expected (forkyard-test-option 'expected_hunks))
           (hints (forkyard-test-wait
                   "forkyard diagnostics"
                   (lambda () (let ((h (forkyard-test-hints)))
                                (and (= (length h) expected) h))))))
      (forkyard-test-note 'diagnostics (vconcat (mapcar #'forkyard-test-describe hints)))

      ;; The quickfix on the first hunk: the only quickfix there, so no menu.
      (goto-char (flymake-diagnostic-beg (car hints)))
      (let ((line (line-number-at-pos)))
        (forkyard-test-code-action "quickfix")
        (forkyard-test-note 'text_after_hunk (forkyard-test-text))
        (forkyard-test-note 'modified_after_hunk (if (buffer-modified-p) t :json-false))
        (goto-char (point-min))
        (forward-line (1- line))
        (forkyard-test-note 'hunk_line_after (forkyard-test-line-text)))
      (forkyard-test-go-idle)
      (forkyard-test-note
       'diagnostics_after_hunk
       (vconcat (mapcar #'forkyard-test-describe
                        (forkyard-test-wait
                         "the applied hunk to lose its hint"
                         (lambda () (let ((h (forkyard-test-hints)))
                                      (and (= (length h) (1- expected)) h))))))))

    ;; "Apply agent #1 to this file" from the source actions; first the user says no.
    (goto-char (point-min))
    (setq forkyard-test-choice (forkyard-test-option 'file_action))
    (let ((before (forkyard-test-text))
          (forkyard-test-answer nil))
      (condition-case err
          (forkyard-test-code-action "source.forkyard")
        (error (forkyard-test-note 'refusal_error (error-message-string err))))
      (forkyard-test-note 'unchanged_after_refusal
                          (if (equal before (forkyard-test-text)) t :json-false)))
    (forkyard-test-code-action "source.forkyard")
    (forkyard-test-note 'text_after_file (forkyard-test-text))
    (forkyard-test-go-idle)
    (forkyard-test-wait "the hints to clear" (lambda () (null (forkyard-test-hints))))

    ;; One apply is one undo step.
    (undo)
    (forkyard-test-note 'text_after_undo (forkyard-test-text))

    (forkyard-test-note 'events_tail
                        (with-current-buffer (jsonrpc-events-buffer server)
                          (buffer-substring-no-properties
                           (max (point-min) (- (point-max) 3000)) (point-max))))
    (eglot-shutdown server)
    (forkyard-test-note 'server_stopped (if (jsonrpc-running-p server) :json-false t))))

(defun forkyard-test-write-result ()
  (forkyard-test-note 'messages (vconcat (reverse forkyard-test-messages)))
  (forkyard-test-note 'prompts (vconcat (reverse forkyard-test-prompts)))
  (forkyard-test-note 'commands (vconcat (reverse forkyard-test-commands)))
  (let ((coding-system-for-write 'utf-8-unix))
    (with-temp-file (forkyard-test-option 'result)
      (insert (json-encode forkyard-test-result)))))

(let ((ok (condition-case err
              (progn (forkyard-test-scenario) t)
            (error
             (forkyard-test-note 'error (error-message-string err))
             (forkyard-test-note
              'events_tail
              (let ((server (ignore-errors (with-current-buffer
                                               (find-buffer-visiting
                                                (forkyard-test-option 'file))
                                             (eglot-current-server)))))
                (and server
                     (with-current-buffer (jsonrpc-events-buffer server)
                       (buffer-substring-no-properties
                        (max (point-min) (- (point-max) 6000)) (point-max))))))
             nil))))
  (forkyard-test-note 'ok (if ok t :json-false))
  (forkyard-test-write-result)
  (kill-emacs (if ok 0 1)))

;;; review.el ends here
